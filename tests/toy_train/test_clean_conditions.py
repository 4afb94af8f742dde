"""Clean-condition training masks (prefix for continuation, range for retakes) follow the latent time grid."""

from __future__ import annotations

import pytest
import torch

from magihuman.train.cache import LatentSample
from magihuman.train.objective import ObjectiveSettings, clean_positions, noise_batch


def _draw(settings, seed, frames=13, audio=51, first=False):
    return clean_positions(frames, audio, settings, first, torch.Generator().manual_seed(seed))


def test_no_rates_means_only_the_first_frame():
    video, audio = _draw(ObjectiveSettings(), 0, first=True)
    assert video.tolist() == [True] + [False] * 12 and not audio.any()
    video, audio = _draw(ObjectiveSettings(), 0, first=False)
    assert not video.any() and not audio.any()


def test_prefix_holds_the_matching_audio_clean():
    settings = ObjectiveSettings(prefix_rate=1.0)
    lengths = set()
    for seed in range(40):
        video, audio = _draw(settings, seed)
        p = int(video.sum())
        lengths.add(p)
        assert video[:p].all() and not video[p:].any() and 1 <= p < 13
        assert audio[: 4 * (p - 1) + 1].all() and not audio[4 * (p - 1) + 1:].any()
    assert len(lengths) > 5  # the prefix length varies


def test_range_leaves_only_its_own_time_noisy():
    settings = ObjectiveSettings(range_rate=1.0)
    for seed in range(40):
        video, audio = _draw(settings, seed)
        noisy = (~video).nonzero().flatten().tolist()
        a, b = noisy[0], noisy[-1] + 1
        assert noisy == list(range(a, b)) and a >= 1
        noisy_audio = (~audio).nonzero().flatten().tolist()
        stop = 4 * b - 3 if b < 13 else 51
        assert noisy_audio == list(range(4 * a - 3, stop))


def test_noise_batch_writes_clean_latents_and_masks_the_loss():
    g = torch.Generator().manual_seed(0)
    sample = LatentSample("a", "caption", torch.randn(48, 13, 2, 2, generator=g), torch.randn(51, 64, generator=g),
                          torch.randn(5, 32, generator=g))
    settings = ObjectiveSettings(first_frame_rate=0.0, text_dropout=0.0, prefix_rate=1.0)
    batch = noise_batch([sample], torch.zeros(3, 32), settings, [torch.Generator().manual_seed(1)])
    p = int((batch.video_mask[0, 0, :, 0, 0] == 0).sum())
    q = int((batch.audio_mask[0, :, 0] == 0).sum())
    assert p >= 1 and q == 4 * (p - 1) + 1
    assert torch.equal(batch.video[0, :, :p], sample.video_latent[:, :p])
    assert not torch.equal(batch.video[0, :, p:], sample.video_latent[:, p:])
    assert torch.equal(batch.audio[0, :q], sample.audio_latent[:q])


def test_terminal_rate_draws_pure_noise():
    """``terminal_rate``: that share of samples sits at sigma = 1 (input = the noise, target = noise - x0)."""
    g = torch.Generator().manual_seed(0)
    sample = LatentSample("a", "caption", torch.randn(48, 5, 2, 2, generator=g), torch.randn(17, 64, generator=g),
                          torch.randn(5, 32, generator=g))

    def draw(settings, seed):
        return noise_batch([sample], torch.zeros(3, 32), settings, [torch.Generator().manual_seed(seed)])

    sigmas = [float(draw(ObjectiveSettings(first_frame_rate=0.0, text_dropout=0.0, terminal_rate=0.5), s).sigma[0])
              for s in range(200)]
    terminal = sum(s == 1.0 for s in sigmas)
    assert 70 <= terminal <= 130  # about half
    assert max(s for s in sigmas if s != 1.0) < 1.0
    batch = draw(ObjectiveSettings(first_frame_rate=0.0, text_dropout=0.0, terminal_rate=1.0), 0)
    eps = batch.video[0]  # sigma 1: the input is the noise itself
    assert float(batch.sigma[0]) == 1.0
    assert torch.allclose(batch.video_target[0], eps - sample.video_latent)
    assert torch.allclose(batch.audio_target[0], batch.audio[0] - sample.audio_latent)


def test_region_weights_mark_the_cells_a_pixel_box_touches():
    """The toy mouth box (48, 66)-(80, 90) on 8x8 cells of 16 px touches columns 3-4 and rows 4-5."""
    from magihuman.toy.drawing import MOUTH_REGION
    from magihuman.train.objective import region_weights

    weights = region_weights((8, 8), MOUTH_REGION, 8.0)[0, 0]
    assert MOUTH_REGION == (48, 66, 80, 90)
    assert weights.shape == (8, 8) and (weights == 8).nonzero().tolist() == [[4, 3], [4, 4], [5, 3], [5, 4]]
    assert int((weights == 1).sum()) == 60
    assert region_weights((2, 2), (0, 0, 1, 1), 3.0)[0, 0].tolist() == [[3.0, 1.0], [1.0, 1.0]]
    import pytest

    with pytest.raises(ValueError, match="outside the 32x32-pixel frames"):
        region_weights((2, 2), (40, 0, 50, 10), 2.0)


#: Latent frames of the sample the region-weight tests score.
REGION_FRAMES = 3


def _video_loss_with_one_error(cell: tuple[int, int], **regions) -> float:
    """The video loss of a model whose only error is 1 in latent cell ``cell`` (row, column) of latent frame 1,
    on one 8x8-cell sample with no clean frame and no text dropout, under the given region settings."""
    from magihuman.train.objective import flow_matching_loss

    g = torch.Generator().manual_seed(0)
    sample = LatentSample("a", "caption", torch.randn(48, REGION_FRAMES, 8, 8, generator=g),
                          torch.randn(4 * (REGION_FRAMES - 1) + 1, 64, generator=g), torch.randn(5, 32, generator=g))
    settings = ObjectiveSettings(first_frame_rate=0.0, text_dropout=0.0, **regions)
    batch = noise_batch([sample], torch.zeros(3, 32), settings, [torch.Generator().manual_seed(1)])

    def model(video, audio, text, text_lengths):
        v = batch.video_target.clone()
        v[:, :, 1, cell[0], cell[1]] += 1.0
        return v, batch.audio_target.clone()

    return flow_matching_loss(model, batch)[1]["video"]


def test_the_video_loss_is_the_region_weighted_mean():
    """A model whose only error is 1 in one latent cell of one frame: loss = w / (48 x weight sum) per element
    of that cell, so with weight 8 on that cell and 60 + 4 x 8 in all the video loss is 48 x 8 / (48 x (T x 92))."""
    from magihuman.toy.drawing import MOUTH_REGION

    def loss_with(weight):  # error in the mouth cell (row 4, column 3)
        return _video_loss_with_one_error((4, 3), video_region=MOUTH_REGION, video_region_weight=weight)

    assert abs(loss_with(8.0) - 8.0 / (REGION_FRAMES * (60 + 4 * 8))) < 1e-7
    assert abs(loss_with(1.0) - 1.0 / (REGION_FRAMES * 64)) < 1e-7


def test_extra_video_regions_multiply_their_weights_into_the_video_mean():
    """The mouth x8 and the hair cap x4 (HAIR_CAP_REGION: rows 1-2, columns 2-5 of the 8x8 latent grid): 4 + 8
    weighted cells of 64, so one unit of error in a hair cell counts 4 / (T x (52 + 4 x 8 + 8 x 4))."""
    from magihuman.toy.drawing import HAIR_CAP_REGION, MOUTH_REGION
    from magihuman.train.config import TrainConfig
    from magihuman.train.objective import region_weights

    hair = region_weights((8, 8), HAIR_CAP_REGION, 4.0)[0, 0]
    assert torch.nonzero(hair == 4.0).tolist() == [[r, c] for r in (1, 2) for c in (2, 3, 4, 5)]
    frames = REGION_FRAMES

    def loss_with(extra, cell):
        return _video_loss_with_one_error(cell, video_region=MOUTH_REGION, video_region_weight=8.0,
                                          extra_video_regions=extra)

    extra = ((*HAIR_CAP_REGION, 4.0),)
    assert abs(loss_with(extra, (1, 3)) - 4.0 / (frames * 116)) < 1e-7
    assert abs(loss_with(extra, (4, 3)) - 8.0 / (frames * 116)) < 1e-7
    assert abs(loss_with((), (1, 3)) - 1.0 / (frames * 92)) < 1e-7
    with pytest.raises(ValueError, match="extra_video_regions must be"):
        TrainConfig(cache="c", output="o", base="b", extra_video_regions=[(10, 0, 5, 16, 2.0)])
    with pytest.raises(ValueError, match="extra_video_regions must be"):
        TrainConfig(cache="c", output="o", base="b", extra_video_regions=[(0, 0, 5, 16, 0.0)])


def test_audio_condition_rate_holds_the_whole_track_clean_without_loss():
    """``audio_condition_rate``: that share of samples is audio-driven (the track is the clean latent and has no
    loss, the video is noised as usual); with the rate at 0 the draws are those of the settings without it."""
    from magihuman.train.objective import flow_matching_loss

    g = torch.Generator().manual_seed(0)
    sample = LatentSample("a", "caption", torch.randn(48, 5, 2, 2, generator=g), torch.randn(17, 64, generator=g),
                          torch.randn(5, 32, generator=g))

    def draw(settings, seed, s=sample):
        return noise_batch([s], torch.zeros(3, 32), settings, [torch.Generator().manual_seed(seed)])

    driven = [bool((draw(ObjectiveSettings(text_dropout=0.0, audio_condition_rate=0.5), s).audio_mask == 0).all())
              for s in range(200)]
    assert 70 <= sum(driven) <= 130  # about half
    batch = draw(ObjectiveSettings(first_frame_rate=0.0, text_dropout=0.0, audio_condition_rate=1.0), 3)
    assert torch.equal(batch.audio[0], sample.audio_latent) and not batch.audio_mask.any()
    assert float(batch.sigma[0]) < 1 and not torch.equal(batch.video[0], sample.video_latent)

    def model(video, audio, text, text_lengths):  # right video, wrong audio: the loss must not see the audio
        return batch.video_target.clone(), batch.audio_target + 1.0

    loss, parts = flow_matching_loss(model, batch)
    assert float(loss) == 0.0 and parts == {"video": 0.0, "audio": 0.0}
    plain, zero = draw(ObjectiveSettings(), 7), draw(ObjectiveSettings(audio_condition_rate=0.0), 7)
    assert torch.equal(plain.video, zero.video) and torch.equal(plain.audio, zero.audio)
    video_only = LatentSample("b", "caption", sample.video_latent, None, sample.text_embeds)
    batch = draw(ObjectiveSettings(audio_condition_rate=1.0), 3, video_only)  # no track: stays pure noise
    assert float(batch.audio_weight[0]) == 0.0 and batch.audio_mask.all()
