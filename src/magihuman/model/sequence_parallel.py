"""Ulysses sequence (context) parallelism for :class:`~magihuman.model.transformer.MagiHumanTransformer` (architecture.md §6.4).

One sample's packed token sequence ``[video | audio | text]`` (N tokens) is cut into ``cp``
contiguous chunks, one per rank of the sequence-parallel group (architecture.md §6.4): with
``N = q*cp + r`` the first ``r`` ranks hold ``q + 1`` tokens and the others ``q``
(:func:`split_sizes`). Everything except attention is row-local (embedders, RoPE rows, norms,
GEMMs, MLP, output heads), so each rank runs it on its own rows only, with the modality group
sizes **of its chunk** (a chunk can span video, audio and text). Attention needs every token:

1. all-to-all 1, "gather sequence, scatter heads" (:meth:`SequenceParallel.scatter_heads`): rank
   ``j`` receives the full sequence for query heads ``[j*Hq/cp, (j+1)*Hq/cp)`` and K/V heads
   ``[j*Hkv/cp, (j+1)*Hkv/cp)``, so GQA groups stay aligned;
2. the unchanged attention kernel runs on ``[B, Hq/cp, N, D]`` (a local window is in global token
   indices and stays valid);
3. all-to-all 2, the inverse (:meth:`SequenceParallel.gather_heads`).

At the end the per-rank output rows are all-gathered (:meth:`SequenceParallel.gather_tokens`,
"undispatch") and depacked exactly as in the single-process model.

Nothing here is global or cached between calls (unlike the reference's scheduler, architecture.md §6.4): the split
sizes live in a :class:`TokenChunk` that one forward creates and drops, so a forward that raises
leaves nothing behind. Input errors (shapes, v1 coordinates with one text token) are raised before
the first collective, and the ranks compare their input sizes first, so they fail together. A rank
that fails *inside* the layers (e.g. out of memory) leaves the others waiting in a collective
until the process group's timeout: launchers should abort, not barrier, on an exception.

Memory per rank: the residual stream and every row-local activation are ``[B, n_k, .]``; attention
holds the full sequence only for its ``Hq/cp`` query and ``Hkv/cp`` K/V heads. The unpacked inputs,
the ``[N, 6B]`` RoPE table and the gathered ``[B, N, 192]`` output are whole on every rank (small).

Launch (architecture.md §6.4)::

    torchrun --nproc_per_node 2 -m magihuman generate --cp 2 ...

    sp = init_sequence_parallel()          # None when WORLD_SIZE is 1 or unset
    model.enable_sequence_parallel(sp)     # every rank holds the same full inputs

The path is inference-only (the collectives are not differentiable).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from magihuman.model.attention import AttentionBackend
from magihuman.model.packing import LocalWindow, TokenLayout


def split_sizes(num_tokens: int, world_size: int) -> list[int]:
    """Per-rank token counts of the contiguous sequence split (architecture.md §6.4).

    With ``num_tokens = q*world_size + r`` the first ``r`` ranks get ``q + 1`` tokens, the rest ``q``.
    Rank ``k`` holds rows ``[sum(sizes[:k]), sum(sizes[:k+1]))``.

    Args:
        num_tokens: N, the packed sequence length (>= 0).
        world_size: cp, the sequence-parallel group size (>= 1).

    Returns:
        ``world_size`` integers summing to ``num_tokens``.

    Raises:
        ValueError: for a negative ``num_tokens`` or a ``world_size`` below 1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    q, r = divmod(num_tokens, world_size)
    return [q + 1 if k < r else q for k in range(world_size)]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class TokenChunk:
    """One rank's contiguous slice of one packed sample, for the duration of one forward.

    Attributes:
        sizes: per-rank token counts (:func:`split_sizes`), identical on every rank.
        rank: this rank's index in the sequence-parallel group.
        global_groups: ``(Nv, Na, Nt)`` of the whole sequence.
    """

    sizes: tuple[int, ...]
    rank: int
    global_groups: tuple[int, int, int]

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]

    @property
    def group_ranges(self) -> tuple[tuple[int, int], ...]:
        """Per modality, the ``[lo, hi)`` rows *within that modality's tokens* that this chunk holds."""
        ranges, offset = [], 0
        for size in self.global_groups:
            lo = min(max(self.start - offset, 0), size)
            hi = min(max(self.stop - offset, 0), size)
            ranges.append((lo, hi))
            offset += size
        return tuple(ranges)

    @property
    def groups(self) -> tuple[int, int, int]:
        """``(video, audio, text)`` token counts of this chunk: what expert linears and norms split by."""
        return tuple(hi - lo for lo, hi in self.group_ranges)  # type: ignore[return-value]

    def take(self, rows: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This chunk's rows of a tensor whose ``dim`` runs over the whole packed sequence (a view)."""
        return rows.narrow(dim, self.start, self.sizes[self.rank])

    def take_groups(self, per_modality: Sequence[torch.Tensor], dim: int = 1) -> tuple[torch.Tensor, ...]:
        """This chunk's rows of ``(video, audio, text)`` token tensors (``[B, Nv, .]``, ...); some may be empty."""
        return tuple(t.narrow(dim, lo, hi - lo) for t, (lo, hi) in zip(per_modality, self.group_ranges))


@dataclass(frozen=True)
class SequenceParallel:
    """A Ulysses sequence-parallel group: the process group, this rank's index in it and its size.

    Build it with :func:`init_sequence_parallel` (from torchrun's environment) or
    :meth:`from_group` (an already initialised ``torch.distributed``). Holds no per-call state.

    Attributes:
        group: the ``torch.distributed`` process group (None = the default group).
        rank: this process's rank within ``group``.
        world_size: cp, the number of ranks sharing one sequence.
    """

    group: Any
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {self.rank}, world_size {self.world_size}")

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_group(cls, group: Any = None) -> SequenceParallel:
        """The group of an initialised ``torch.distributed`` (None: the default, all ranks).

        Raises:
            RuntimeError: if ``torch.distributed`` is not initialised.
        """
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; call init_sequence_parallel() first")
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    @classmethod
    def from_env(cls, backend: str | None = None, cp_size: int | None = None) -> SequenceParallel | None:
        """Same as :func:`init_sequence_parallel`."""
        return init_sequence_parallel(backend, cp_size)

    # ------------------------------------------------------------------------------- checks
    def check_heads(self, num_heads: int, num_kv_heads: int) -> None:
        """cp must divide the query heads and the K/V heads (architecture.md §6.4: cp in {1, 2, 4, 8} for 40/8).

        Raises:
            ValueError: naming the allowed sizes.
        """
        if num_heads % self.world_size or num_kv_heads % self.world_size:
            allowed = _divisors(math.gcd(num_heads, num_kv_heads))
            raise ValueError(
                f"sequence parallel size cp={self.world_size} must divide the query heads ({num_heads}) and the "
                f"K/V heads ({num_kv_heads}); for this model cp must be one of {allowed}"
            )

    def chunk(self, layout: TokenLayout, batch_size: int, device: torch.device | str) -> TokenChunk:
        """Dispatch plan of one forward: this rank's rows of the packed sequence (architecture.md §6.4).

        Collective: the ranks exchange their input sizes first, so ranks that were given different
        inputs all raise the same error instead of hanging in an all-to-all.

        Args:
            layout: the sample layout (the same on every rank).
            batch_size: B of the inputs.
            device: where the small check tensor lives (the inputs' device; CUDA for NCCL).

        Raises:
            ValueError: on every rank, if the ranks' inputs have different sizes.
        """
        mine = torch.tensor(
            [batch_size, layout.frames, layout.patch_rows, layout.patch_cols, layout.audio_tokens,
             layout.text_tokens], dtype=torch.int64, device=device,
        )
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine, group=self.group)
        signatures = [tuple(t.tolist()) for t in everyone]
        if len(set(signatures)) != 1:
            raise ValueError(
                "sequence-parallel ranks were given different inputs (B, T, Hp, Wp, A, Nt per rank: "
                f"{signatures}); every rank must call the model with the same full inputs"
            )
        return TokenChunk(tuple(split_sizes(layout.total_tokens, self.world_size)), self.rank, layout.groups)

    # ------------------------------------------------------------------------------- collectives
    def scatter_heads(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sizes: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All-to-all 1, "gather sequence, scatter heads" (architecture.md §6.4), one message for q, k and v.

        Args:
            query: ``[B, n_k, Hq, D]``, this rank's rows (``n_k = sizes[rank]``).
            key, value: ``[B, n_k, Hkv, D]``; same dtype and D as ``query``.
            sizes: per-rank token counts (:func:`split_sizes`).

        Returns:
            ``q [B, N, Hq/cp, D]``, ``k, v [B, N, Hkv/cp, D]``: the full sequence in global order for
            query heads ``[rank*Hq/cp, (rank+1)*Hq/cp)`` and K/V heads ``[rank*Hkv/cp, ...)``.

        Raises:
            ValueError: if the heads are not divisible by cp or the rows are not ``sizes[rank]``.
        """
        cp, n_local = self.world_size, sizes[self.rank]
        heads = []
        blocks = []
        for name, t in (("query", query), ("key", key), ("value", value)):
            b, n, h, d = t.shape
            if n != n_local or h % cp:
                raise ValueError(
                    f"{name} is {tuple(t.shape)}: expected {n_local} rows (sizes {list(sizes)}, rank {self.rank}) "
                    f"and heads divisible by cp={cp}"
                )
            heads.append(h // cp)
            # [B, n_k, cp, h/cp, D] -> [cp, n_k, B, h/cp, D]: block j is rank j's head slice.
            blocks.append(t.reshape(b, n, cp, h // cp, d).permute(2, 1, 0, 3, 4))
        send = torch.cat(blocks, dim=3).contiguous().flatten(0, 1)  # [cp * n_k, B, sum(h)/cp, D]
        recv = send.new_empty((sum(sizes), *send.shape[1:]))  # [N, B, sum(h)/cp, D], rank order = token order
        dist.all_to_all_single(recv, send, output_split_sizes=list(sizes), input_split_sizes=[n_local] * cp,
                               group=self.group)
        q, k, v = torch.split(recv.permute(1, 0, 2, 3), heads, dim=2)
        return q, k, v

    def gather_heads(self, heads: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """All-to-all 2, the inverse of :meth:`scatter_heads` (architecture.md §6.4).

        Args:
            heads: ``[B, N, H/cp, D]``, the full sequence for this rank's head slice.
            sizes: per-rank token counts.

        Returns:
            ``[B, n_k, H, D]``: this rank's rows with every head, in the original head order.
        """
        cp, n_local = self.world_size, sizes[self.rank]
        b, n, h, d = heads.shape
        if n != sum(sizes):
            raise ValueError(f"heads has {n} rows but the split sizes {list(sizes)} sum to {sum(sizes)}")
        send = heads.permute(1, 0, 2, 3).contiguous()  # [N, B, h, D]: rows of rank i are contiguous
        recv = send.new_empty((cp * n_local, b, h, d))
        dist.all_to_all_single(recv, send, output_split_sizes=[n_local] * cp, input_split_sizes=list(sizes),
                               group=self.group)
        # [cp, n_k, B, h, D] -> [B, n_k, cp, h, D] -> [B, n_k, cp*h, D]: head j*h + i came from rank j.
        return recv.view(cp, n_local, b, h, d).permute(2, 1, 0, 3, 4).reshape(b, n_local, cp * h, d)

    def gather_tokens(self, rows: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """All-gather of variable-length token chunks along dim 1 ("undispatch", architecture.md §6.4).

        Args:
            rows: ``[B, n_k, C]`` (any trailing dims), this rank's rows.
            sizes: per-rank token counts.

        Returns:
            ``[B, N, C]``: the chunks of all ranks in rank (= token) order.
        """
        longest = max(sizes)
        pad = longest - rows.shape[1]
        padded = rows if pad == 0 else torch.cat([rows, rows.new_zeros((rows.shape[0], pad, *rows.shape[2:]))], 1)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[:, :size] for part, size in zip(parts, sizes)], dim=1)

    # ------------------------------------------------------------------------------- model hooks
    def wrap_attention(self, backend: AttentionBackend, chunk: TokenChunk) -> UlyssesAttention:
        """The attention seam for one forward: ``backend`` between the two all-to-alls."""
        return UlyssesAttention(self, backend, chunk.sizes)

    def undispatch(
        self, chunk: TokenChunk, video_tokens: torch.Tensor, audio_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All-gather the output heads' rows into the whole sequence (architecture.md §6.4, §4.5).

        The local rows are packed as the reference's output ``Y [B, n_k, max(Cv, Ca)]`` (video rows,
        audio rows zero-padded, text rows zero), gathered, and split by the global groups.

        Args:
            chunk: this forward's :class:`TokenChunk`.
            video_tokens: ``[B, nv_local, Cv]`` float32 final video head output of this chunk.
            audio_tokens: ``[B, na_local, Ca]`` float32 final audio head output of this chunk.

        Returns:
            ``(video [B, Nv, Cv], audio [B, Na, Ca])`` for the whole sample, on every rank.
        """
        b, nv_local, cv = video_tokens.shape
        na_local, ca = audio_tokens.shape[1], audio_tokens.shape[2]
        local = video_tokens.new_zeros((b, chunk.sizes[chunk.rank], max(cv, ca)))
        local[:, :nv_local, :cv] = video_tokens
        local[:, nv_local:nv_local + na_local, :ca] = audio_tokens
        full = self.gather_tokens(local, chunk.sizes)
        nv, na, _ = chunk.global_groups
        return full[:, :nv, :cv].contiguous(), full[:, nv:nv + na, :ca].contiguous()


@dataclass(frozen=True)
class UlyssesAttention:
    """An :data:`~magihuman.model.attention.AttentionBackend` over a sequence split across ranks.

    Takes and returns this rank's rows in the seam's layout (``q [B, Hq, n_k, D]``,
    ``k, v [B, Hkv, n_k, D]`` -> ``[B, Hq, n_k, D]``); the wrapped kernel sees the full sequence for
    ``Hq/cp`` query and ``Hkv/cp`` K/V heads, and the window (global indices) unchanged.
    """

    sp: SequenceParallel
    backend: AttentionBackend
    sizes: tuple[int, ...]

    def __call__(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LocalWindow | None = None
    ) -> torch.Tensor:
        q, k, v = self.sp.scatter_heads(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), self.sizes)
        heads = self.backend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return self.sp.gather_heads(heads.transpose(1, 2), self.sizes).transpose(1, 2)


# ----------------------------------------------------------------------------------- process setup
def init_sequence_parallel(backend: str | None = None, cp_size: int | None = None) -> SequenceParallel | None:
    """Initialise ``torch.distributed`` from torchrun's environment and return the sequence-parallel group.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``env://``).
    With NCCL the current CUDA device is set to ``LOCAL_RANK`` first. Groups are consecutive ranks
    (architecture.md §6.4); with ``cp_size < WORLD_SIZE`` the other groups are data-parallel replicas that redo
    the same request (architecture.md §6.4). An already initialised process group is reused.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; None picks NCCL when CUDA is available, else gloo.
        cp_size: ranks per sequence; None means all of ``WORLD_SIZE``.

    Returns:
        The :class:`SequenceParallel` of this rank, or None when there is nothing to split
        (``WORLD_SIZE`` unset or 1, or ``cp_size == 1``; the process group is still initialised
        when ``WORLD_SIZE > 1``).

    Raises:
        ValueError: if ``cp_size`` does not divide the world size.
        RuntimeError: if ``torch.distributed`` is unavailable in this build.
    """
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            if cp_size not in (None, 1):
                raise ValueError(f"cp_size={cp_size} needs that many processes; launch with torchrun --nproc_per_node")
            return None
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    world, rank = dist.get_world_size(), dist.get_rank()
    cp = world if cp_size is None else cp_size
    if cp < 1 or world % cp:
        raise ValueError(f"cp_size={cp_size} must be a positive divisor of the world size {world}")
    if cp == 1:
        return None
    if cp == world:
        return SequenceParallel.from_group(None)
    mine = None
    for first in range(0, world, cp):  # every rank must create every group, in the same order
        group = dist.new_group(list(range(first, first + cp)))
        if first <= rank < first + cp:
            mine = group
    return SequenceParallel.from_group(mine)


def is_output_rank() -> bool:
    """True on the rank that decodes and writes files: the last one (architecture.md §6.4), or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    return dist.get_rank() == dist.get_world_size() - 1


def shutdown_sequence_parallel() -> None:
    """Barrier on all ranks (architecture.md §6.4), then tear the process group down; a no-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
