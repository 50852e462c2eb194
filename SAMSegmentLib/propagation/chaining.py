"""Chaining propagation for single-image models (LiteMedSAM, SAM, MedSAM).

Each next slice is prompted with the previous slice's result: its bounding box grown by a margin (and, when
``use_mask_prompt`` is set, its low-resolution logits as mask prompt). A stop rule ends a chain where the object
has ended: an empty prediction, a collapse or explosion of the area, low predicted IoU, low overlap with the
previous slice (unless most of the new mask lies next to it), or an intensity change (too few voxels of the new
mask inside the seed mask's central intensity range: the box has slid onto another tissue). Each slice tries a
few prompts (see ``_candidates``: the box, the box with the previous logits as mask prompt, one box per part when
the previous mask has several parts, and, when none of them looks like the object, a box around the seed-range
voxels next to the previous mask) and keeps the one with the best predicted IoU x intensity agreement with the
seed.

Between two prompted slices (corrections not counted) whose chains both run into the gap, the nearer prompt's
chain owns each slice (see ``plan_chains``), and each chain also runs on through the other's half: a slice there
gets the other chain's parts that do not overlap what it shows and that look like the object to the chain it
shows (see ``_with_parts_of``). Two prompts on two parts of an object (two lesions, or a part the first prompt's
chain never reaches) then both reach the slices between them; such slices are streamed a second time when a part
is added. A correction inside the gap owns slices like any chain; the parts are added around it too.

Inside a 3D box's slice range (``SlicePrompt.extent``) the object is known to go on: where the stop rule fires
there, a box around the voxels of the seed's intensity range next to the previous mask is tried too, and the
chain keeps the better result instead of stopping (it ends at the range's ends, or when nothing is found).

Corrections: a points-only prompt on a slice that a chain reaches is resolved against that chain's result there
(the context): it becomes a prompted slice whose prompt is the points plus the context mask (see
``SlicePredictor.correct``) and keeps its corrected result. Propagation then continues outward from it, away from
the seed whose chain reached it; the slices between that seed and the correction keep the seed's chain (a
correction fixes what is wrong where it was made and beyond, not the part the user had no reason to touch).
The correction's chain rejoins the chain it corrected on the first slice where its mask differs from what that
chain shows there by at most ``join_fraction`` of the voxels the correction changed, with the same parts (no
part found by one alone; an ended chain's empty slice never qualifies): the correction's effect has died out,
and from there on the earlier result stays (and is reused, not recomputed).
A correction whose result holds a part that does not overlap its context (an include click on a part the chain
missed, or beyond the slice where it had ended) also runs that part alone back toward the prompted slice (not a
correction) whose chain it corrected: each slice between gets the parts of that run that do not overlap what it
shows and look like the object to the chain shown there, as in a gap (``_back_runs``, ``_cross_back``). When a
correction lies inside such a run, the corrections are resolved a second time with those parts in what slices
show, so a click there takes them as context (the runs themselves stay as the first resolution found them).
Where the chain had already ended, the context is empty and the box of the chain's last non-empty slice is the
correction's hint (an include point is then segmented with boxes of that size around it); an exclude point
there has nothing to remove and is ignored.

Chains are cached by (seed slice, direction, seed prompt): re-running after a correction recomputes only chains
whose seed prompt changed or that must now reach further; every other slice is reused. Seed results and chains
live in least-recently-used caches under one byte budget (``cache_bytes``, masks and logits counted).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from ..metrics import connected_components, dice
from ..predictor import BOX_MARGIN, SlicePredictor, SliceResult, grow_box
from ..prompts import PromptError, SlicePrompt, box_from_mask
from ..slices import mask_to_model_grid
from .plan import PropagationCancelled, PropagationResult, SliceOutcome, plan_chains

log = logging.getLogger(__name__)

DEFAULT_CHAIN_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ChainParams:
    """Stop rule and prompt settings. Areas are voxel counts on the slice; ratios relative to the previous slice."""

    box_margin_fraction: float = BOX_MARGIN[0]  # box grows by this fraction of its side ...
    box_margin_min: float = BOX_MARGIN[1]  # ... and at least this many voxels
    # Feed the previous slice's low-res logits as mask prompt. Off by default: with LiteMedSAM it helped brain1
    # (one-box Dice 0.75 vs 0.63) but anchored the liver to its larger upper extent (0.83 vs 0.91).
    use_mask_prompt: bool = False
    min_area_ratio: float = 0.2  # collapse: area below this fraction of the previous slice
    max_area_ratio: float = 2.5  # leak: area above this multiple of the previous slice
    min_score: float = 0.4  # the model's predicted IoU
    min_overlap: float = 0.3  # Dice with the previous slice's mask
    min_area: int = 4  # fewer voxels than this counts as empty
    intensity_percentiles: tuple[float, float] = (10.0, 90.0)  # the seed mask's central grey-level range ...
    min_intensity_fraction: float = 0.1  # ... must hold at least this fraction of the new mask's voxels
    # Several parts on the previous slice: also prompt each part with its own box; the candidate with the higher
    # predicted IoU x intensity agreement wins. Measured (one box, LiteMedSAM): liver 0.907 -> 0.948 (below the
    # largest slice it splits in two or three parts); the other cases have one part on (almost) every slice.
    per_part_boxes: bool = True
    # Also try the box with the previous slice's low-res logits as mask prompt (kept when it scores better).
    # Measured (one box): brain1 0.620 -> 0.718, t2 0.948 -> 0.964, lung2 and liver unchanged; as the only
    # prompt (use_mask_prompt) it anchored the liver to its larger upper extent (0.87).
    mask_prompt_candidate: bool = True
    part_min_fraction: float = 0.1  # parts smaller than this fraction of the largest are not prompted alone
    rescue_search: float = 0.5  # inside a 3D box, the intensity rescue looks this far (fraction of the box side)
    # When the best candidate's quality (predicted IoU x share of voxels in the seed's intensity range) is below
    # this, also try the box of the seed-range voxels next to the previous mask (the 3D box's rescue prompt), kept
    # only when the model's predicted IoU beats every other candidate's and its own quality reaches this value
    # (without that last condition, on lung2 box3d a part of the tumour with 37 % seed grey levels and predicted
    # IoU 0.797 against 0.778 replaced a slice of Dice 0.83 by one of 0.58; box3d 0.905 -> 0.911). Measured (one
    # box, LiteMedSAM, with the near-overlap rule below): brain1 0.618 -> 0.761 (on slice 14 the tumour shrinks to
    # its bright right part: Dice 0.81 there instead of 0.09), liver 0.933 -> 0.946, lung2 0.899 -> 0.902, t2
    # unchanged.
    intensity_fallback: float = 0.45
    # The overlap rule forgives a low Dice with the previous mask when at least this share of the new mask lies
    # within ``near_radius`` x sqrt(previous area) voxels of it: an object shrinking to one side between thick
    # slices is still the object. Alone it changed no shared case; brain1 needs it for the fallback's slice 14.
    min_near_share: float = 0.5
    near_radius: float = 0.1
    # A correction's chain rejoins the chain it corrected (whose result was the context) on the first slice where
    # their masks differ by at most this fraction of the voxels the correction changed on its own slice and have
    # the same parts (so a part an include click added, or an object it picked up after the chain had ended, is
    # followed while it tapers): the correction's effect has died out, and from there on the earlier result
    # stays. Without it, a click that changed its slice by a few voxels redrew every slice beyond, and chaining
    # amplifies small changes (the mask-prompt candidate carries the previous slice's logits): on lung2
    # (box3d-clicks-5) a click changed 9 voxels of slice 20, none of slice 21, and 542 of slice 22, whose Dice
    # fell from 0.825 to 0.576. Measured (benchmarks/bench_click_rejoin.py): 2.8 slices re-run per click instead
    # of 8.3. None: off.
    join_fraction: float | None = 0.25
    # Between two prompted slices, each chain also runs through the other's half and adds the separate parts it
    # finds there (see ``ChainPropagator._cross_gaps``). Measured (benchmarks/bench_two_boxes.py, a second
    # reference box on the shared cases): brain1 with a box on its second component's slice 11, 0.715 -> 0.803.
    cross_gaps: bool = True
    # A correction whose result holds a part its context did not touch (an include click on a part the propagation
    # never reached, e.g. beyond the slice where the chain had ended) also runs back toward the seed whose chain
    # it corrected, and the slices between get the parts it finds there that do not overlap what they show and
    # look like the object (``ChainPropagator._back_runs``). Without it, that part appears only on the corrected
    # slice and beyond, and the user has to click it again on every slice between. Measured (box3d-clicks-5,
    # OpenVINO bf16): brain1 0.825 -> 0.852 (the second click, on the second component's slice 11, adds it on
    # slice 12 too: Dice there 0.667 -> 0.903), lung2 0.917 -> 0.918, t2 and liver unchanged.
    back_runs: bool = True


def _prompt_fingerprint(prompt: SlicePrompt) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(prompt.points, dtype=float).tobytes())
    h.update(np.ascontiguousarray(prompt.labels, dtype=np.int64).tobytes())
    h.update(b"-" if prompt.box is None else np.asarray(prompt.box, dtype=float).tobytes())
    h.update(b"-" if prompt.mask is None else np.packbits(np.asarray(prompt.mask, dtype=bool)).tobytes())
    h.update(repr(prompt.extent).encode())
    return h.hexdigest()


class _Chain:
    """Outcomes of one seed in one direction, extended on demand."""

    def __init__(self, seed: int, step: int) -> None:
        self.seed, self.step = seed, step
        self.outcomes: list[SliceOutcome] = []
        self.key: tuple = ()  # its key in the chain cache
        self.ended = False
        self.last_logits = None
        self.intensity_range: tuple[float, float] | None = None
        # a correction's chain: the chain it corrected, with that chain's seed result; the voxels the correction
        # changed on its slice; whether it has rejoined the chain it corrected
        self.parent: tuple[_Chain, SliceResult] | None = None
        self.change = 0
        self.joined = False
        self.joined_at: int | None = None  # outcomes from this position on are the parent's

    def reach(self) -> int:
        return self.seed + self.step * len(self.outcomes)

    @property
    def nbytes(self) -> int:
        """Bytes of its masks and logits; a joined chain's outcomes from the join on are its parent's, counted
        there."""
        own = self.outcomes[: self.joined_at] if self.joined_at is not None else self.outcomes
        total = sum(o.mask.nbytes for o in own)
        if self.last_logits is not None:
            total += self.last_logits.numel() * self.last_logits.element_size()
        return total


def _result_nbytes(r: SliceResult) -> int:
    return r.mask.nbytes + r.logits.nbytes + r.low_res_logits.numel() * r.low_res_logits.element_size()


class _BoundedCache:
    """Least-recently-used map whose values' sizes (``size(value)``, bytes) are kept under ``budget_bytes`` by
    :meth:`trim` (values may grow after insertion, like chains extended in place)."""

    def __init__(self, budget_bytes: int, size: Callable[[object], int]) -> None:
        self.budget_bytes = int(budget_bytes)
        self._size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable):
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value) -> None:
        self._items[key] = value
        self._items.move_to_end(key)

    @property
    def nbytes(self) -> int:
        return sum(self._size(v) for v in self._items.values())

    def trim(self, budget_bytes: int, keep: set[Hashable]) -> int:
        """Evict least recently used entries (never those in ``keep``) until the total fits ``budget_bytes``;
        returns the bytes still held."""
        sizes = {k: self._size(v) for k, v in self._items.items()}
        total = sum(sizes.values())
        for key in list(self._items):
            if total <= budget_bytes:
                break
            if key in keep:
                continue
            total -= sizes[key]
            del self._items[key]
        return total


class ChainPropagator:
    """Propagates prompts along one axis of the predictor's volume by chaining slice to slice."""

    def __init__(self, predictor: SlicePredictor, params: ChainParams | None = None,
                 cache_bytes: int = DEFAULT_CHAIN_CACHE_BYTES) -> None:
        self.predictor = predictor
        self.params = params or ChainParams()
        self.cache_bytes = int(cache_bytes)
        self._seeds = _BoundedCache(cache_bytes, _result_nbytes)
        self._chains = _BoundedCache(cache_bytes, lambda c: c.nbytes)
        # this run's back runs: corrected slice -> (chain of the added parts back toward the seed, its seed
        # result, the seed)
        self._back: dict[int, tuple[_Chain, SliceResult, int]] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by cached seed results and chains."""
        return self._seeds.nbytes + self._chains.nbytes

    def _context(self, axis: str) -> tuple:
        p = self.predictor
        return (axis, p.volume.uid, p.volume.version, p.window.key, p.model.name)

    def next_prompt(self, prev_mask: np.ndarray) -> SlicePrompt | None:
        box = box_from_mask(prev_mask)
        if box is None:
            return None
        return SlicePrompt(box=grow_box(box, prev_mask.shape, self.params.box_margin_fraction,
                                        self.params.box_margin_min))

    def grey(self, axis: str, index: int) -> np.ndarray:
        """Windowed grey levels (0..255, float) of a slice on its voxel grid."""
        from ..slices import extract_slice

        return self.predictor.window.apply_float(extract_slice(self.predictor.volume.array, axis, index))

    def stop_reason(self, prev: SliceOutcome, mask: np.ndarray, score: float,
                    grey: np.ndarray | None = None, intensity_range: tuple[float, float] | None = None) -> str | None:
        """Why the chain should end at this slice (None to go on)."""
        p = self.params
        area, prev_area = int(mask.sum()), int(prev.mask.sum())
        if area < p.min_area:
            return "empty"
        if area < p.min_area_ratio * prev_area:
            return f"area collapsed to {area / prev_area:.2f} of the previous slice"
        if area > p.max_area_ratio * prev_area:
            return f"area grew to {area / prev_area:.2f} times the previous slice"
        if score < p.min_score:
            return f"predicted IoU {score:.2f} below {p.min_score}"
        overlap = dice(mask, prev.mask)
        if overlap < p.min_overlap and _share_near(mask, prev.mask, p.near_radius) < p.min_near_share:
            return f"overlap with the previous slice {overlap:.2f} below {p.min_overlap}"
        if grey is not None and intensity_range is not None and p.min_intensity_fraction > 0:
            values = grey[mask]
            inside = float(np.mean((values >= intensity_range[0]) & (values <= intensity_range[1])))
            if inside < p.min_intensity_fraction:
                return f"only {inside:.0%} of the mask has the seed's intensities"
        return None

    # --- seeds, corrections and chains ------------------------------------------------------------------------

    def _seed_result(self, axis: str, ctx: tuple, index: int, prompt: SlicePrompt) -> tuple[SliceResult, bool]:
        """(result of a prompted slice, whether the model ran for it)."""
        key = (*ctx, index, _prompt_fingerprint(prompt))
        cached = self._seeds.get(key)
        if cached is not None:
            return cached, False
        result = self.predictor.predict(axis, index, prompt)
        self._ran[index] = None
        self._seeds.put(key, result)
        return result, True

    def _chain(self, axis: str, ctx: tuple, prompts: dict[int, SlicePrompt], parents: dict[int, tuple[int, int]],
               seed: int, step: int, known: tuple[int, int] | None) -> _Chain:
        """The (cached) chain from ``seed`` in direction ``step``; a correction's outward chain is wired to the
        chain it corrected (``parents``: corrected slice -> (seed, step) of that chain), which is part of its key."""
        parent = None
        if seed in parents and parents[seed][1] == step:
            above = parents[seed][0]
            seed_result, _ = self._seed_result(axis, ctx, above, prompts[above])
            parent = (self._chain(axis, ctx, prompts, parents, above, step, known), seed_result)
        key = (*ctx, seed, step, _prompt_fingerprint(prompts[seed]), known, None if parent is None else parent[0].key)
        chain = self._chains.get(key)
        if chain is None:
            chain = _Chain(seed, step)
            chain.key, chain.parent = key, parent
            if parent is not None:
                corrected, _ = self._seed_result(axis, ctx, seed, prompts[seed])
                chain.change = int((corrected.mask != prompts[seed].mask).sum())
            self._chains.put(key, chain)
        self._used.add(key)
        return chain

    def _resolve(self, axis: str, ctx: tuple, prompts: dict[int, SlicePrompt], direction: str, lo: int, hi: int,
                 known: tuple[int, int] | None, should_stop: Callable[[], bool]
                 ) -> tuple[dict[int, SlicePrompt], dict[int, tuple[int, ...]], dict[int, tuple[int, int]]]:
        """Prompted slices with every points-only correction turned into a context prompt, the directions
        corrected slices propagate in, and the chain each correction corrected (corrected slice -> (seed, step); see
        the module docstring). Corrections are resolved nearest-to-their-seed first, so a correction beyond another
        one takes its context from the corrected slice's chain."""
        fixed = {i: p for i, p in prompts.items() if not p.points_only}
        pending = {i: p for i, p in prompts.items() if p.points_only}
        steps: dict[int, tuple[int, ...]] = {}
        parents: dict[int, tuple[int, int]] = {}
        while pending:
            covered = []
            for s, step, last in plan_chains(sorted(fixed), direction, lo, hi, steps) if fixed else []:
                for c in pending:
                    if min(s, last) <= c <= max(s, last) and c != s:
                        covered.append((abs(c - s), c, s, step))
            if covered:
                _, c, s, step = min(covered)
                context, last_mask, owner = self._context_at(axis, ctx, fixed, parents, s, step, c, known,
                                                             should_stop)
                # what is shown there: the covering chain's mask and the parts a gap's other chain adds
                context = self._with_gap_parts(axis, c, context, owner, should_stop)
                prompt = pending.pop(c)
                if not context.any() and not (prompt.labels == 1).any():
                    log.info("exclude points on slice %d: the propagation left nothing there to remove", c)
                    continue
                hint = None
                if not context.any() and last_mask is not None:
                    hint = grow_box(box_from_mask(last_mask), last_mask.shape, self.params.box_margin_fraction,
                                    self.params.box_margin_min)
                fixed[c] = SlicePrompt(points=prompt.points, labels=prompt.labels, box=hint, mask=context)
                steps[c] = (step,)
                parents[c] = (s, step)
                continue
            with_include = sorted(c for c, p in pending.items() if (p.labels == 1).any())
            if not with_include:
                c = min(pending)
                raise PromptError(f"slice {c} ({axis}) has only exclude points and nothing to correct there: add "
                                  "an include point or a box, or click on a slice the propagation reached")
            c = with_include[0]
            fixed[c] = pending.pop(c)
        return fixed, steps, parents

    def _context_at(self, axis: str, ctx: tuple, prompts: dict[int, SlicePrompt], parents: dict[int, tuple[int, int]],
                    seed: int, step: int, index: int, known: tuple[int, int] | None, should_stop: Callable[[], bool]
                    ) -> tuple[np.ndarray, np.ndarray | None, _Chain]:
        """(the chain's mask on ``index``, the chain's last non-empty mask up to there or None, the chain),
        extending the (cached) chain from ``seed`` as far as needed."""
        seed_result, _ = self._seed_result(axis, ctx, seed, prompts[seed])
        chain = self._chain(axis, ctx, prompts, parents, seed, step, known)
        distance = abs(index - seed)
        while len(chain.outcomes) < distance:
            if should_stop():
                raise PropagationCancelled("propagation was cancelled")
            index_next = chain.seed + chain.step * (len(chain.outcomes) + 1)
            self._extend(axis, chain, index_next, seed_result, known)
        last = seed_result.mask if seed_result.mask.any() else None
        for outcome in chain.outcomes[:distance]:
            if outcome.mask.any():
                last = outcome.mask
        return chain.outcomes[distance - 1].mask, last, chain

    def run(
        self,
        axis: str,
        prompts: dict[int, SlicePrompt],
        direction: str = "both",
        frange: tuple[int, int] | None = None,
        on_slice: Callable[[SliceOutcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[int, int], None] | None = None,
    ) -> PropagationResult:
        """Segment the prompted slices and propagate; outcomes stream to ``on_slice`` outward from the seeds.

        ``frange`` is the inclusive index range (default: the whole axis); 3D boxes (``extent``) narrow it to the
        union of their slice ranges. Raises PropagationCancelled when ``should_stop`` turns true (checked before
        every slice), PromptError when a correction has nothing to correct.
        """
        axis = axis.upper()
        n = self.predictor.volume.axis_length(axis)
        lo, hi = frange if frange is not None else (0, n - 1)
        extents = [p.extent for p in prompts.values() if p.extent is not None]
        known = None
        if extents:
            known = (max(0, min(e[0] for e in extents)), min(n - 1, max(e[1] for e in extents)))
            lo, hi = max(lo, known[0]), min(hi, known[1])
        ctx = self._context(axis)
        self._used: set = set()
        self._ran: dict[int, None] = {}  # slices the model ran for in this run, in order
        # gaps between prompted slices (not corrections) that both prompts' chains run into (see _cross_gaps)
        boxes = {i: p for i, p in prompts.items() if not p.points_only}
        self._gap_state = (ctx, boxes, known, self._gaps(sorted(boxes), direction, lo, hi))
        try:
            if should_stop():
                raise PropagationCancelled("propagation was cancelled")
            self._back = {}
            seeds_prompts, steps, parents = self._resolve(axis, ctx, prompts, direction, lo, hi, known, should_stop)
            back = self._back_runs(axis, ctx, seeds_prompts, parents, known, should_stop)
            if back:
                self._back = back
                if any(min(s, c) < j < max(s, c) for c, (_, _, s) in back.items() for j in parents):
                    # a correction between a back run's ends takes what is shown there as its context: resolve
                    # again with the parts the back run adds (the runs themselves stay as found)
                    seeds_prompts, steps, parents = self._resolve(axis, ctx, prompts, direction, lo, hi, known,
                                                                  should_stop)
            return self._run(axis, ctx, seeds_prompts, steps, parents, direction, lo, hi, known, on_slice,
                             should_stop, progress)
        finally:
            self._trim()

    def _trim(self) -> None:
        """Keep the caches under their budget (this run's chains are evicted last)."""
        seed_bytes = self._seeds.trim(self.cache_bytes // 4, set())
        held = self._chains.trim(self.cache_bytes - seed_bytes, self._used)
        if held + seed_bytes > self.cache_bytes:
            log.info("chain cache holds %d bytes, above its budget of %d: this propagation alone needs them",
                     held + seed_bytes, self.cache_bytes)

    def _run(self, axis, ctx, prompts, steps, parents, direction, lo, hi, known, on_slice, should_stop, progress
             ) -> PropagationResult:
        result = PropagationResult(axis, window=self.predictor.window)
        seeds = sorted(prompts)
        chains = plan_chains(seeds, direction, lo, hi, steps)
        gaps = self._gap_state[3]
        total = len(seeds) + sum(abs(last - s) for s, _, last in chains) + sum(2 * (t - s - 1) for s, t in gaps)
        total += sum(abs(c - s) - 1 for c, (_, _, s) in self._back.items())
        done = 0

        def report(outcome: SliceOutcome | None) -> None:
            """Stream ``outcome`` (None: nothing new) and count one step of progress."""
            nonlocal done
            if outcome is not None:
                result.outcomes[outcome.index] = outcome
                if on_slice is not None:
                    on_slice(outcome)
            done += 1
            if progress is not None:
                progress(done, total)

        seed_results: dict[int, SliceResult] = {}
        for s in seeds:
            if should_stop():
                raise PropagationCancelled("propagation was cancelled")
            r, _ = self._seed_result(axis, ctx, s, prompts[s])
            seed_results[s] = r
            report(SliceOutcome(s, r.mask, r.score, "prompt", s))

        active = [(self._chain(axis, ctx, prompts, parents, s, step, known), last) for s, step, last in chains]
        owners: dict[int, _Chain] = {}  # the chain whose result each propagated slice shows

        # Round-robin one slice per chain so results arrive outward from all seeds at once.
        distance = 1
        while any(abs(last - c.seed) >= distance for c, last in active):
            for chain, last in active:
                if abs(last - chain.seed) < distance:
                    continue
                index = chain.seed + chain.step * distance
                owners[index] = chain
                if distance <= len(chain.outcomes):
                    report(chain.outcomes[distance - 1])
                    continue
                if should_stop():
                    raise PropagationCancelled("propagation was cancelled")
                report(self._extend(axis, chain, index, seed_results[chain.seed], known))
            distance += 1
        self._cross_gaps(axis, gaps, owners, result, report, should_stop)
        self._cross_back(axis, owners, result, report, should_stop)
        result.recomputed = list(self._ran)
        return result

    def _gaps(self, boxes: list[int], direction: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """(s, t): neighbouring prompted slices (corrections not counted) whose chains both run into the gap
        between them (``cross_gaps`` on)."""
        if not self.params.cross_gaps:
            return []
        plan = plan_chains(boxes, direction, lo, hi)
        return [(s, t) for s, step, last in plan for t, t_step, t_last in plan
                if step == 1 and t_step == -1 and t_last == last + 1]

    def _cross_gaps(self, axis, gaps, owners, result, report, should_stop) -> None:
        """Between two prompted slices s < t that both run into the gap, the chain from s also runs on to t - 1
        and the chain from t down to s + 1; each propagated slice there gets the parts of the other chain's mask
        that do not overlap what it shows and that look like the object to the chain it shows (see
        ``_with_parts_of``). Two prompts on two parts of an object (two lesions, or a part the first prompt's
        chain never reaches) then both reach the slices between them. Corrections inside the gap own slices like
        any chain, and the two prompts' chains still add their parts around them."""
        ctx, boxes, known, _ = self._gap_state
        for s, t in gaps:
            up = self._chain(axis, ctx, boxes, {}, s, 1, known)
            down = self._chain(axis, ctx, boxes, {}, t, -1, known)
            for k in range(1, t - s):
                for runner, index in ((up, s + k), (down, t - k)):
                    self._add_runner_parts(axis, index, runner, owners, result, report, should_stop)

    def _add_runner_parts(self, axis, index, runner, owners, result, report, should_stop, seed_result=None) -> None:
        """Stream slice ``index`` with the parts of ``runner``'s mask there added to what it shows (see
        ``_with_parts_of``), or count a step when nothing is added, on a prompted slice (no owner) and where the
        runner's own result is shown."""
        owner = owners.get(index)
        if owner is None or owner is runner:
            report(None)
            return
        theirs = self._runner_outcome(axis, runner, index, should_stop, seed_result)
        shown = result.outcomes[index]
        merged = self._with_parts_of(axis, index, shown.mask, theirs.mask, owner)
        if merged is shown.mask:
            report(None)
        elif shown.mask.any():
            report(SliceOutcome(index, merged, shown.score, shown.source, shown.seed, shown.stopped))
        else:
            report(SliceOutcome(index, merged, theirs.score, theirs.source, theirs.seed))

    def _back_runs(self, axis: str, ctx: tuple, prompts: dict[int, SlicePrompt], parents: dict[int, tuple[int, int]],
                   known: tuple[int, int] | None, should_stop: Callable[[], bool] = lambda: False
                   ) -> dict[int, tuple[_Chain, SliceResult, int]]:
        """Corrections whose result holds parts (8-connected) that do not overlap their context, with a slice
        between them and the prompted slice whose chain they corrected (through other corrections: a click made
        later between them must see the part too): corrected slice -> (the chain of those parts alone back toward
        that slice, its seed result, that slice). ``prompts`` are the resolved prompts (see ``_resolve``)."""
        if not self.params.back_runs:
            return {}
        out = {}
        for c, (s, step) in sorted(parents.items()):
            while s in parents:  # back to the prompted slice (not a correction) whose chain it corrected
                s = parents[s][0]
            prompt = prompts[c]
            if abs(c - s) < 2 or prompt.mask is None or not (prompt.labels == 1).any():
                continue
            if should_stop():
                raise PropagationCancelled("propagation was cancelled")
            corrected, _ = self._seed_result(axis, ctx, c, prompt)
            context = np.asarray(prompt.mask, dtype=bool)
            with_parts = _with_separate_parts(context, corrected.mask)
            if with_parts is context:
                continue
            parts = with_parts & ~context
            log.info("correction on slice %d added a part of %d voxels: it also runs back toward slice %d", c,
                     int(parts.sum()), s)
            geo = self.predictor.geometry(axis)
            low = self.predictor.model.mask_to_low_res(mask_to_model_grid(parts, geo),
                                                       self.predictor.embedding(axis, c))
            seed = SliceResult(axis, c, parts, np.where(parts, 1.0, -1.0).astype(np.float32), corrected.score, low,
                               corrected.window)
            # keyed by the parts: the chain depends on nothing else
            out[c] = (self._chain(axis, ctx, {c: SlicePrompt(mask=parts)}, {}, c, -step, known), seed, s)
        return out

    def _cross_back(self, axis, owners, result, report, should_stop) -> None:
        """Each back run (see ``_back_runs``) adds, on the slices between its correction and the seed, the parts
        of its mask that do not overlap what the slice shows and that look like the object to the chain shown
        there (``_with_parts_of``); prompted slices are left as they are."""
        for c, (runner, seed, s) in self._back.items():
            for k in range(1, abs(c - s)):
                self._add_runner_parts(axis, c + runner.step * k, runner, owners, result, report, should_stop, seed)

    def _runner_outcome(self, axis: str, runner: _Chain, index: int, should_stop: Callable[[], bool],
                        seed_result: SliceResult | None = None) -> SliceOutcome:
        """A gap's chain's (or a back run's, from its ``seed_result``) outcome on ``index``, extending the
        (cached) chain as far as needed."""
        ctx, boxes, known, _ = self._gap_state
        if seed_result is None:
            seed_result, _ = self._seed_result(axis, ctx, runner.seed, boxes[runner.seed])
        distance = abs(index - runner.seed)
        while len(runner.outcomes) < distance:
            if should_stop():
                raise PropagationCancelled("propagation was cancelled")
            self._extend(axis, runner, runner.seed + runner.step * (len(runner.outcomes) + 1), seed_result, known)
        return runner.outcomes[distance - 1]

    def _with_gap_parts(self, axis: str, index: int, own: np.ndarray, owner: _Chain,
                        should_stop: Callable[[], bool] = lambda: False) -> np.ndarray:
        """``own`` (``owner``'s mask on slice ``index``) as shown there: with the parts that the chains of a gap
        holding ``index`` add (see ``_cross_gaps``) and those that back runs through ``index`` add (see
        ``_back_runs``); ``own`` itself elsewhere."""
        ctx, boxes, known, gaps = self._gap_state
        for s, t in gaps:
            if s < index < t:
                for seed, step in ((s, 1), (t, -1)):
                    runner = self._chain(axis, ctx, boxes, {}, seed, step, known)
                    if runner is not owner:
                        theirs = self._runner_outcome(axis, runner, index, should_stop)
                        own = self._with_parts_of(axis, index, own, theirs.mask, owner)
        for c, (runner, seed, s) in self._back.items():
            if min(s, c) < index < max(s, c) and runner is not owner:
                theirs = self._runner_outcome(axis, runner, index, should_stop, seed)
                own = self._with_parts_of(axis, index, own, theirs.mask, owner)
        return own

    def _with_parts_of(self, axis: str, index: int, own: np.ndarray, other: np.ndarray, owner: _Chain
                       ) -> np.ndarray:
        """``own`` (the mask ``owner``'s result shows on slice ``index``) plus the parts of ``other`` that do not
        overlap it and that pass ``owner``'s intensity rule (at least ``min_intensity_fraction`` of their voxels
        in its seed's grey-level range): measured on brain1 with boxes on slices 11 and 16, the parts the chain
        from 11 found beyond the object's second component held 0-1 % of the other seed's grey levels, the real
        parts 46-96 %. ``own`` itself when nothing is added."""
        if not other.any():
            return own
        rng = owner.intensity_range
        if rng is None or self.params.min_intensity_fraction <= 0:
            return _with_separate_parts(own, other)
        grey = self.grey(axis, index)

        def looks_like_the_object(part: np.ndarray) -> bool:
            values = grey[part]
            return float(np.mean((values >= rng[0]) & (values <= rng[1]))) >= self.params.min_intensity_fraction

        return _with_separate_parts(own, other, looks_like_the_object)

    def _candidates(self, axis: str, index: int, prev: np.ndarray, logits, grey: np.ndarray,
                    intensity_range: tuple[float, float] | None) -> list[tuple[str, np.ndarray, float, object]]:
        """(name, mask, score, low-res logits) of each prompt tried on slice ``index`` from the previous mask:
        its grown box; that box with the previous logits as mask prompt; when the mask has several sizeable
        parts, one grown box per part (masks united, score the lowest): one box around parts that are apart makes
        the model pick one of them or bridge the gap; and when none of these looks like the object (quality
        below ``intensity_fallback``), the box of the seed-range voxels next to the previous mask, if the model
        is surer of it than of every other candidate and its own quality reaches ``intensity_fallback``. ``grey``
        is the slice's windowed grey levels."""
        p = self.params
        out = []
        prompt = self.next_prompt(prev)
        mask_logits = logits if p.use_mask_prompt else None
        r = self.predictor.predict(axis, index, prompt, mask_logits=mask_logits, multimask=False, box_trials=False)
        out.append(("box", r.mask, r.score, r.low_res_logits))
        if p.mask_prompt_candidate and not p.use_mask_prompt and logits is not None:
            r = self.predictor.predict(axis, index, prompt, mask_logits=logits, multimask=False, box_trials=False)
            out.append(("box+mask", r.mask, r.score, r.low_res_logits))
        parts = _parts(prev, p.part_min_fraction) if p.per_part_boxes else []
        if len(parts) > 1:
            union = np.zeros_like(prev)
            scores = []
            for part in parts:
                box = grow_box(box_from_mask(part), prev.shape, p.box_margin_fraction, p.box_margin_min)
                rp = self.predictor.predict(axis, index, SlicePrompt(box=box), multimask=False, box_trials=False)
                union |= rp.mask
                scores.append(rp.score)
            out.append(("parts", union, float(min(scores)), None))
        if intensity_range is not None and max(self._quality(grey, c[1], c[2], intensity_range)
                                               for c in out) < p.intensity_fallback:
            box = self._intensity_box(grey, prev, intensity_range)
            if box is not None:
                r = self.predictor.predict(axis, index, SlicePrompt(box=box), multimask=False, box_trials=False)
                if r.score > max(c[2] for c in out) and self._quality(grey, r.mask, r.score,
                                                                       intensity_range) >= p.intensity_fallback:
                    out.append(("intensity-box", r.mask, r.score, r.low_res_logits))
        return out

    def _quality(self, grey: np.ndarray, mask: np.ndarray, score: float, intensity_range) -> float:
        """How much a candidate looks like the object: predicted IoU x share of voxels in the seed's range."""
        if mask.sum() < self.params.min_area:
            return -1.0
        if intensity_range is None:
            return score
        values = grey[mask]
        return score * float(np.mean((values >= intensity_range[0]) & (values <= intensity_range[1])))

    def _intensity_box(self, grey: np.ndarray, prev: np.ndarray, intensity_range) -> np.ndarray | None:
        """Rescue prompt: the grown box of the voxels in the seed's intensity range, around the previous mask
        (within its box grown by ``rescue_search``), that touch the previous mask's footprint."""
        import SimpleITK as sitk

        p = self.params
        window = np.zeros_like(prev)
        x0, y0, x1, y1 = grow_box(box_from_mask(prev), prev.shape, p.rescue_search, p.box_margin_min).astype(int)
        window[y0 : y1 + 1, x0 : x1 + 1] = True
        inside = window & (grey >= intensity_range[0]) & (grey <= intensity_range[1])
        image = sitk.BinaryMorphologicalOpening(sitk.GetImageFromArray(inside.astype(np.uint8)), [1, 1])
        labels = connected_components(sitk.GetArrayFromImage(image).astype(bool))
        touching = np.unique(labels[prev & (labels > 0)])
        if touching.size == 0:
            return None
        chosen = np.isin(labels, touching)
        if chosen.sum() < p.min_area:
            return None
        return grow_box(box_from_mask(chosen), prev.shape, p.box_margin_fraction, p.box_margin_min)

    def _extend(self, axis: str, chain: _Chain, index: int, seed_result: SliceResult,
                known: tuple[int, int] | None = None) -> SliceOutcome:
        if chain.joined:  # the correction's effect has died out: the chain it corrected goes on
            outcome = self._parent_outcome(axis, chain, index, known)
            chain.outcomes.append(outcome)
            return outcome
        empty = np.zeros_like(seed_result.mask)
        if chain.ended:
            outcome = SliceOutcome(index, empty, 0.0, "propagated", chain.seed)
            chain.outcomes.append(outcome)
            return outcome
        if chain.outcomes:
            prev = chain.outcomes[-1]
        else:
            prev = SliceOutcome(chain.seed, seed_result.mask, seed_result.score, "prompt", chain.seed)
            chain.last_logits = seed_result.low_res_logits
            if seed_result.mask.any():
                values = self.grey(axis, chain.seed)[seed_result.mask]
                lo, hi = np.percentile(values, self.params.intensity_percentiles)
                chain.intensity_range = (float(lo), float(hi))
        if not prev.mask.any():
            chain.ended = True
            outcome = SliceOutcome(index, empty, 0.0, "propagated", chain.seed, stopped="empty")
            chain.outcomes.append(outcome)
            return outcome
        self._ran[index] = None
        grey = self.grey(axis, index)
        candidates = self._candidates(axis, index, prev.mask, chain.last_logits, grey, chain.intensity_range)
        name, mask, score, logits = max(candidates, key=lambda c: self._quality(grey, c[1], c[2],
                                                                                   chain.intensity_range))
        reason = self.stop_reason(prev, mask, score, grey, chain.intensity_range)
        inside = known is not None and known[0] <= index <= known[1]
        if reason is not None and inside and chain.intensity_range is not None:
            # the 3D box says the object goes on here: look for it by intensity next to where it was
            box = self._intensity_box(grey, prev.mask, chain.intensity_range)
            if box is not None:
                r = self.predictor.predict(axis, index, SlicePrompt(box=box), multimask=False, box_trials=False)
                if self._quality(grey, r.mask, r.score, chain.intensity_range) > self._quality(
                        grey, mask, score, chain.intensity_range):
                    name, mask, score, logits = "intensity", r.mask, r.score, r.low_res_logits
                    reason = self.stop_reason(prev, mask, score, grey, chain.intensity_range)
        log.debug("slice %d from slice %d: %s prompt", index, prev.index, name)
        if reason is not None and inside and not reason.startswith(("empty", "only")):
            # area, predicted IoU and overlap rules guard against leaving the object, which the 3D box bounds;
            # a result of another tissue's intensities or an empty one still ends the chain
            log.info("slice %d inside the 3D box: kept despite the stop rule (%s)", index, reason)
            reason = None
        if reason is not None:
            log.info("chain from slice %d stops at %d: %s", chain.seed, index, reason)
            chain.ended = True
            outcome = SliceOutcome(index, empty, score, "propagated", chain.seed, stopped=reason)
        else:
            if logits is not None:
                chain.last_logits = logits
            outcome = SliceOutcome(index, mask, score, "propagated", chain.seed)
            if chain.parent is not None and self.params.join_fraction is not None:
                theirs = self._parent_outcome(axis, chain, index, known)
                shown = self._with_gap_parts(axis, index, theirs.mask, chain.parent[0])
                # same parts: a part the correction alone found (an ended chain's slice is empty) is followed on
                if _same_parts(mask, shown) and (mask != shown).sum() <= self.params.join_fraction * chain.change:
                    log.info("chain from corrected slice %d rejoins the chain from slice %d at slice %d",
                             chain.seed, chain.parent[0].seed, index)
                    chain.joined, chain.joined_at = True, len(chain.outcomes)
                    outcome = theirs
        chain.outcomes.append(outcome)
        return outcome

    def _parent_outcome(self, axis: str, chain: _Chain, index: int, known: tuple[int, int] | None) -> SliceOutcome:
        """The outcome on ``index`` of the chain a correction's chain corrected, extending it as far as needed."""
        parent, seed_result = chain.parent
        distance = abs(index - parent.seed)
        while len(parent.outcomes) < distance:
            self._extend(axis, parent, parent.seed + parent.step * (len(parent.outcomes) + 1), seed_result, known)
        return parent.outcomes[distance - 1]


def _with_separate_parts(own: np.ndarray, other: np.ndarray,
                        keep: Callable[[np.ndarray], bool] = lambda part: True) -> np.ndarray:
    """``own`` (2D bool) plus the 8-connected parts of ``other`` that do not overlap it and that ``keep`` accepts;
    ``own`` itself (the same object) when nothing is added."""
    if not other.any():
        return own
    labels = connected_components(other)
    touching = set(np.unique(labels[own & (labels > 0)]).tolist())
    added = np.zeros_like(own)
    for label in range(1, int(labels.max()) + 1):
        part = labels == label
        if label not in touching and keep(part):
            added |= part
    return own | added if added.any() else own


def _same_parts(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every 8-connected part of each 2D mask overlaps the other mask (no part found by one alone)."""
    for one, other in ((a, b), (b, a)):
        labels = connected_components(one)
        if np.setdiff1d(np.unique(labels[one]), np.unique(labels[one & other])).size:
            return False
    return True


def _parts(mask: np.ndarray, min_fraction: float) -> list[np.ndarray]:
    """8-connected parts of a 2D mask holding at least ``min_fraction`` of the largest part's voxels."""
    labels = connected_components(mask)
    counts = np.bincount(labels.reshape(-1))[1:]
    if counts.size < 2:
        return []
    keep = [n + 1 for n in range(counts.size) if counts[n] >= min_fraction * counts.max()]
    return [labels == n for n in keep]


def _share_near(mask: np.ndarray, prev: np.ndarray, radius_fraction: float) -> float:
    """Share of ``mask``'s voxels within ``radius_fraction`` x sqrt(area of ``prev``) voxels (at least 2) of
    ``prev`` (2D bool masks on one grid; SimpleITK's default ball-shaped dilation)."""
    import SimpleITK as sitk

    radius = max(2, int(round(radius_fraction * np.sqrt(prev.sum()))))
    near = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(prev.astype(np.uint8)),
                                                    [radius, radius])).astype(bool)
    return float((mask & near).sum()) / max(1, int(mask.sum()))
