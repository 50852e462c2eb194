"""Windows: the window fitted to an object (CT by the object's own intensity and surroundings, other modalities by
the volume's percentiles widened to the box), kept for the object's whole propagation, refitted for the next
object, and overridden by an explicit window."""

from __future__ import annotations

import numpy as np
import pytest
from doubles import ThresholdModel

from SAMSegmentLib.prompts import SlicePrompt
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import CT_PRESETS, Window, auto_window, fit_window, prompt_region


def ct_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU volume [k, j, i]: air outside a body of soft tissue (40 HU), a lung (-850 HU) holding a nodule (30 HU),
    and an organ (60 HU) in the soft tissue. Returns (array, nodule mask, organ mask)."""
    k, j, i = np.mgrid[0:12, 0:96, 0:96]
    array = np.full(k.shape, -1000, dtype=np.int16)
    body = (j - 48) ** 2 + (i - 48) ** 2 <= 44**2
    array[body] = 40
    lung = body & ((j - 40) ** 2 / 22**2 + (i - 30) ** 2 / 14**2 <= 1)
    array[lung] = -850
    nodule = (k >= 3) & (k <= 8) & ((j - 40) ** 2 + (i - 30) ** 2 <= 6**2)
    array[nodule] = 30
    organ = (k >= 2) & (k <= 9) & ((j - 60) ** 2 + (i - 66) ** 2 <= 12**2)
    array[organ] = 60
    return array, nodule, organ


def box_of(mask2d: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask2d)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)


def test_ct_fit_centres_on_the_object_and_spans_its_surroundings():
    array, nodule, organ = ct_phantom()
    lung_fit = fit_window(array, prompt_region(array[5], box_of(nodule[5]) + [-3, -3, 3, 3], None))
    organ_fit = fit_window(array, prompt_region(array[5], box_of(organ[5]), None))
    assert lung_fit.name == organ_fit.name == "fit-ct"
    # the nodule in lung gets a lung-like window: the lung around it is not clipped, the nodule is mid-grey
    assert lung_fit.low <= -850 and lung_fit.high >= 800
    assert 100 <= lung_fit.apply(np.array([30]))[0] <= 155
    # the organ in soft tissue gets a soft-tissue-wide window centred on it (at least the 400 HU minimum)
    assert organ_fit.high - organ_fit.low == pytest.approx(400.0)
    assert (organ_fit.low + organ_fit.high) / 2 == pytest.approx(60.0)
    # the volume window would be the soft-tissue preset for both
    assert auto_window(array).name == "ct-soft-tissue"


def test_non_ct_fit_is_the_volume_percentiles_widened_to_a_bright_box():
    rng = np.random.default_rng(0)
    array = rng.uniform(200, 400, size=(8, 50, 50)).astype(np.float32)
    array[3:5, 20:26, 20:26] = 2000  # a small very bright lesion, beyond the volume's 99.5th percentile
    base = auto_window(array)
    assert base.high < 2000
    fitted = fit_window(array, prompt_region(array[4], np.array([18, 18, 27, 27]), None))
    assert fitted.name == "fit-percentile" and fitted.low == pytest.approx(base.low)
    assert fitted.high >= 1999
    plain = fit_window(array, prompt_region(array[4], np.array([2, 2, 10, 10]), None))
    assert (plain.low, plain.high) == pytest.approx((base.low, base.high))  # nothing clipped: the volume window


def test_points_only_region_is_a_square_around_the_points():
    values = np.arange(100 * 80, dtype=float).reshape(100, 80)
    region = prompt_region(values, None, np.array([[40.0, 50.0]]))
    assert region.shape == (11, 11)  # 1/8 of the smaller side (80) = 10 voxels, edges inclusive
    assert region[5, 5] == values[50, 40]


def session_on(array, window=None, window_mode="fit"):
    return SegmentationSession(ThresholdModel(), Volume(array.astype(np.float32)), window=window,
                               window_mode=window_mode)


def test_fitted_window_is_stable_across_the_slices_of_one_object_and_refitted_for_the_next():
    array, nodule, organ = ct_phantom()
    session = session_on(array)
    assert not session.window_fitted and session.prefetch("K", [4, 5]) == 0  # no window known yet: nothing to do
    first = session.preview("K", 5, SlicePrompt(box=box_of(nodule[5]) + [-3, -3, 3, 3]))
    fitted = session.window
    assert session.window_fitted and first.window == fitted and fitted.name == "fit-ct"
    # other slices of the same object, previews and propagation keep the window
    other = session.preview("K", 7, SlicePrompt(box=box_of(organ[7])))
    result = session.propagate("K", {4: SlicePrompt(box=box_of(nodule[4]) + [-3, -3, 3, 3])}, "both")
    assert other.window == fitted and result.window == fitted and session.window == fitted
    assert session.prefetch("K", [1]) == 1
    # the next object gets its own window
    session.new_object()
    second = session.preview("K", 5, SlicePrompt(box=box_of(organ[5])))
    assert second.window != fitted and second.window.high - second.window.low == pytest.approx(400.0)
    # embeddings are cached per window: when the nodule's window returns, its slice is not encoded again
    encodes = session.model.encode_calls
    session.new_object()
    again = session.preview("K", 5, SlicePrompt(box=box_of(nodule[5]) + [-3, -3, 3, 3]))
    assert again.window == fitted and session.model.encode_calls == encodes


def test_explicit_window_overrides_fitting_and_volume_mode_uses_one_window():
    array, nodule, _ = ct_phantom()
    explicit = Window.from_width_level(*CT_PRESETS["ct-lung"], "display")
    session = session_on(array, window=explicit)
    r = session.preview("K", 5, SlicePrompt(box=box_of(nodule[5])))
    assert r.window == explicit and session.window == explicit
    session.new_object()
    assert session.propagate("K", {5: SlicePrompt(box=box_of(nodule[5]))}, "none").window == explicit
    volume_mode = session_on(array, window_mode="volume")
    r = volume_mode.preview("K", 5, SlicePrompt(box=box_of(nodule[5])))
    assert r.window == auto_window(array) and not volume_mode.window_fitted
    with pytest.raises(ValueError, match="window_mode"):
        session_on(array, window_mode="display")


def test_fit_uses_the_largest_box_of_the_first_prompts():
    array, nodule, _ = ct_phantom()
    session = session_on(array)
    small = SlicePrompt(box=np.array([28, 38, 32, 42]))  # inside the nodule only
    large = SlicePrompt(box=box_of(nodule[5]) + [-3, -3, 3, 3])
    session.propagate("K", {3: small, 5: large}, "none")
    expected = fit_window(array, prompt_region(array[5], large.box, None))
    assert (session.window.low, session.window.high) == pytest.approx((expected.low, expected.high))


@pytest.mark.parametrize("text", ["nan,40", "inf,40", "400,nan", "400,-inf", "0,40", "-10,40", "400", "lung,1", "a,b"])
def test_a_window_that_is_not_a_finite_positive_width_and_level_is_refused(text):
    from SAMSegmentLib.windowing import parse_window

    with pytest.raises(ValueError, match="--window"):
        parse_window(text, np.zeros((2, 4, 4)))


def test_window_texts_that_are_accepted():
    from SAMSegmentLib.windowing import parse_window

    array = np.linspace(-1000, 1000, 64).reshape(1, 8, 8)
    assert parse_window("fit", array) is None and parse_window(None, array) is None
    w = parse_window("400,40", array)
    assert (w.low, w.high) == (-160.0, 240.0)
    assert parse_window("volume", array) is not None and parse_window(next(iter(CT_PRESETS)), array) is not None
