"""The attention kernels a user can choose (``--attention``), as plain names.

Kept apart from :mod:`magihuman.model.attention`, which interprets them
(``resolve_attention_backend``), so that the CLI and :mod:`magihuman.runtime.options` can list the
choices without importing torch.
"""

#: ``auto`` picks per device (architecture.md §14); ``sdpa``, ``flex`` and ``fa3`` name a kernel.
ATTENTION_CHOICES = ("auto", "sdpa", "flex", "fa3")
