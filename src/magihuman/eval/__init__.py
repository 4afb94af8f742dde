"""The evaluation kit (``magihuman eval``): per-clip metrics, aggregates, reports.

One module per concept:

* :mod:`~magihuman.eval.prompt_set`: the prompt-set format (JSONL) and its reader;
* :mod:`~magihuman.eval.clips`: reading a clip back from an MP4;
* :mod:`~magihuman.eval.text` and :mod:`~magihuman.eval.asr`: WER/CER with a text normaliser, and the
  pluggable speech recogniser (transformers Whisper by default);
* :mod:`~magihuman.eval.toy_speech`: the toy's own speech analysis (word count, low/high pitch);
* :mod:`~magihuman.eval.sync`: audio-video sync from mouth opening and voice loudness;
* :mod:`~magihuman.eval.toy_vision`: mouth opening and part colours measured from the toy's drawing;
* :mod:`~magihuman.eval.face_mesh`: mouth opening of real faces (mediapipe, optional ``eval-face`` extra);
* :mod:`~magihuman.eval.fidelity`: PSNR and SSIM of the first frame;
* :mod:`~magihuman.eval.performance`: stage times and peak memory;
* :mod:`~magihuman.eval.scoring`: every metric of one clip, and the aggregates of a run;
* :mod:`~magihuman.eval.runner`: ``eval run`` / ``eval score`` / ``eval compare``;
* :mod:`~magihuman.eval.report`: ``report.json`` and the self-contained ``report.html``.

The definitions are in ``docs/evaluation.md``.
"""
