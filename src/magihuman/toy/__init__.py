"""The toy talking world: deterministic synthetic clips of a 2-D cartoon person who speaks.

Plain numpy + Pillow, no torch, so that data generation and the metrics that read it stay light:

* :mod:`~magihuman.toy.palette`: the named colours of each part (hair, shirt, wall, skin) and the fixed
  drawing colours (mouth, eyes);
* :mod:`~magihuman.toy.attributes`: what a clip shows and says (:class:`ToyAttributes`) and how it is drawn
  at random;
* :mod:`~magihuman.toy.voice`: the voiced-syllable synthesiser and the per-frame loudness;
* :mod:`~magihuman.toy.drawing`: the frame renderer and the fixed measurement regions;
* :mod:`~magihuman.toy.captions`: captions in the model's prompt structure, and their parser;
* :mod:`~magihuman.toy.clip`: :class:`ToyClip` and :func:`make_clip`;
* :mod:`~magihuman.toy.dataset`: the training manifest and the held-out prompt set on disk;
* :mod:`~magihuman.toy.cli`: ``magihuman toy ...``.
"""
