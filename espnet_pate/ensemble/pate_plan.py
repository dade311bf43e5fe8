"""Stage 4, plan: the settings of every release, from public information only (conf/pate.yaml).

An entry names a mechanism, a level, a target epsilon and its noise (absolute, ``*_over_k`` multiples of the number
of teachers, or ``calibrate``). What each release may look at before it is paid for is fixed here:

* which public utterances are queried, and in what order (``select``: ``first`` = utterance-id order, ``shortest``
  = by duration; both read public audio only);
* when it stops: the thresholded plurality asks exactly ``queries`` queries (its cost is known before decoding;
  ``queries: auto`` chooses the number that maximises the expected labels under the agreement of shadow teachers
  trained on public data, a public survey: ``plan_queries``);
  the noisy-max mechanisms stop on their data-independent cost (``stop_at_budget``), which depends on public
  settings and on the outputs of accounted mechanisms only (for Confident-GNMax: which queries were answered).
  A stop on the data-dependent cost would make the set of labelled utterances a function of the votes, which no
  finite epsilon covers, so it is refused (PRIVACY.md, ground rules).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from espnet_pate.privacy.calibration import calibrate_confident_gnmax, calibrate_gnmax_sigma, calibrate_lnmax_scale
from espnet_pate.privacy.mechanisms import ConfidentGNMax, GNMax, LNMax
from espnet_pate.privacy.plurality import (
    DELTA_SHARE, ThresholdedPlurality, calibrate_plurality, plan_queries, plurality_cost,
)

MECHANISMS = ("lnmax", "gnmax", "confident_gnmax", "plurality")
LEVELS = ("token", "utterance")
SELECTIONS = ("first", "shortest")

NOISE_KEYS = {"gnmax": ("sigma",), "lnmax": ("laplace_scale",), "confident_gnmax": ("sigma1", "threshold", "sigma2"),
              "plurality": ("sigma", "threshold")}
ENTRY_DEFAULTS = {
    "level": "token", "vote": "hard", "delta": 1e-5, "stop_at_budget": True, "conversion": "improved",
    "max_symbols_per_frame": 5, "batch_size": 8, "nbest": 8, "beam_size": 8, "max_utterances": None, "seed": None,
    "calibrate": None, "queries": None, "select": "first", "threshold_delta_share": DELTA_SHARE,
}


class ConfigError(ValueError):
    """A bad stage-4 configuration (names the entry and the key)."""


@dataclass
class RunSettings:
    """One entry of conf/pate.yaml, resolved (noise in absolute units for this ensemble's K)."""

    name: str
    mechanism: str
    level: str
    target_eps: float
    delta: float
    noise: Dict[str, float]
    vote: str = "hard"
    stop_at_budget: bool = True
    conversion: str = "improved"
    max_symbols_per_frame: int = 5
    batch_size: int = 8
    nbest: int = 8
    beam_size: int = 8
    max_utterances: Optional[int] = None
    seed: Optional[int] = None
    calibration: Optional[dict] = None  # how the noise was chosen, when it was calibrated
    queries: Optional[int] = None  # plurality: the number of queries, fixed in advance
    select: str = "first"
    threshold_delta_share: float = DELTA_SHARE  # plurality: the share of delta its threshold's Q beta may take

    def release_params(self) -> dict:
        """What identifies the release (everything that changes the labels or their accounting)."""
        out = asdict(self)
        out.pop("batch_size")  # only changes where a budget stop falls inside a batch: kept in the report
        if self.level == "token":
            out.pop("nbest"), out.pop("beam_size")
        elif self.mechanism != "plurality":
            out.pop("max_symbols_per_frame")
        if self.mechanism != "plurality":
            out.pop("threshold_delta_share"), out.pop("queries")
        else:
            out.pop("nbest"), out.pop("beam_size"), out.pop("vote"), out.pop("stop_at_budget")
        return out


def load_config(path) -> dict:
    import yaml
    from pathlib import Path

    conf = yaml.safe_load(Path(path).read_text()) or {}
    if "runs" not in conf:
        raise ConfigError(f"{path}: missing section 'runs'")
    if not isinstance(conf["runs"], dict) or not conf["runs"]:
        raise ConfigError(f"{path}: 'runs' must map run names to their settings")
    if "ledger" in conf:
        raise ConfigError(f"{path}: the 'ledger' section moved: one ledger per sensitive data set, its budget in "
                          "conf/privacy.yaml")
    unknown = set(conf) - {"defaults", "runs"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}")
    conf["runs"] = expand_runs(conf["runs"], path)
    return conf


EPS_FIELD = "{eps}"


def expand_runs(runs: Mapping, where="conf/pate.yaml") -> Dict[str, dict]:
    """Entries whose ``target_eps`` is a list become one entry per budget, named by putting the budget in place of
    ``{eps}`` in the entry's name (``plurality_eps{eps}`` with ``target_eps: [1, 8]``: plurality_eps1,
    plurality_eps8): a sweep over budgets is written once."""
    out: Dict[str, dict] = {}
    for name, entry in runs.items():
        budgets = (entry or {}).get("target_eps")
        if not isinstance(budgets, list):
            if EPS_FIELD in str(name):
                raise ConfigError(f"{where}: run {name}: {EPS_FIELD} in a name needs a list of target_eps")
            out[name] = entry
            continue
        if EPS_FIELD not in str(name) or not budgets:
            raise ConfigError(f"{where}: run {name}: a list of target_eps needs {EPS_FIELD} in the run's name "
                              "(and at least one budget)")
        for eps in budgets:
            try:
                label = f"{float(eps):g}"
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: run {name}: target_eps {eps!r} is not a number") from None
            expanded = str(name).replace(EPS_FIELD, label)
            if expanded in out or expanded in runs:
                raise ConfigError(f"{where}: run {name}: {expanded} is named twice")
            out[expanded] = {**entry, "target_eps": eps}
    return out


def release_names(names, suffix: str = "", repeats: int = 1) -> Dict[str, str]:
    """{release name: configuration entry}: ``suffix`` (the labelled public set, e.g. ``_diff``) after each entry's
    name, and repeats 2..N of an entry as ``<name><suffix>_seed<N>`` (fresh noise each: separate releases, each
    paid for). Repeat 1 keeps the plain name, so a sweep extends a default run without releasing it again."""
    if int(repeats) < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    return {f"{n}{suffix}" + (f"_seed{r}" if r > 1 else ""): n for n in names for r in range(1, int(repeats) + 1)}


def _scaled(entry: dict, key: str, k: int, name: str) -> Optional[float]:
    """``key`` given absolutely or as ``key_over_k`` (a multiple of the number of teachers)."""
    rel = entry.get(f"{key}_over_k")
    if rel is not None and entry.get(key) is not None:
        raise ConfigError(f"run {name}: give {key} or {key}_over_k, not both")
    if rel is not None:
        return float(rel) * k
    return None if entry.get(key) is None else float(entry[key])


def _check_keys(name: str, merged: dict, mech: str) -> None:
    if "accounting" in merged:
        raise ConfigError(f"run {name}: 'accounting' is gone: a run stops on its data-independent cost or after a "
                          "fixed number of queries; a data-dependent stop leaks the votes (PRIVACY.md), so "
                          "data-dependent figures are reported as not released")
    allowed = set(ENTRY_DEFAULTS) | {"mechanism", "target_eps"} | {
        k for keys in NOISE_KEYS.values() for key in keys for k in (key, f"{key}_over_k")}
    unknown = set(merged) - allowed
    if unknown:
        raise ConfigError(f"run {name}: unknown keys {sorted(unknown)}")
    for key in {k for keys in NOISE_KEYS.values() for k in keys} - set(NOISE_KEYS[mech]):
        if merged.get(key) is not None or merged.get(f"{key}_over_k") is not None:
            raise ConfigError(f"run {name}: {key} does not apply to {mech}")


def _calibrate(name: str, mech: str, cal, target: float, delta: float, k: int, queries: Optional[int],
               share: float = DELTA_SHARE) -> tuple:
    if mech == "plurality":
        if cal is not None:
            raise ConfigError(f"run {name}: plurality calibrates from target_eps and queries; drop 'calibrate'")
        c = calibrate_plurality(target, delta, queries, delta_share=share)
        return {"sigma": c.sigma, "threshold": c.threshold}, {
            "queries": queries, "basis": "data-independent: sigma is the smallest that fits target_eps with these "
            f"queries; T = 1 + sigma PhiInv(1 - {share:g} delta/Q), so the threshold spends {share:g} of delta"}
    if not isinstance(cal, dict) or "planned_queries" not in cal:
        raise ConfigError(f"run {name}: calibrate needs {{planned_queries: N}} (data-independent calibration)")
    planned = int(cal["planned_queries"])
    if mech == "gnmax":
        noise = {"sigma": calibrate_gnmax_sigma(target, delta, planned)}
    elif mech == "lnmax":
        noise = {"laplace_scale": calibrate_lnmax_scale(target, delta, planned)}
    else:
        p = calibrate_confident_gnmax(target, delta, planned, k)
        noise = {"sigma1": p.sigma1, "threshold": p.threshold, "sigma2": p.sigma2}
    return noise, {"planned_queries": planned, "basis": "data_independent: the planned queries cannot cost more "
                   "than target_eps however the teachers vote"}


def _auto_queries(name: str, merged: dict, survey: Optional[Mapping], num_teachers: int, max_queries: int) -> tuple:
    if survey is None:
        raise ConfigError(f"run {name}: queries: auto is planned from a public agreement survey of shadow teachers "
                          "(pate_label --survey N --shadow, then --plan-survey FILE)")
    if survey.get("private", True):
        raise ConfigError(f"run {name}: the survey of the real teachers is an operator diagnostic of sensitive data "
                          "and may not size a setting: survey shadow teachers trained on public data")
    if int(survey["num_teachers"]) != num_teachers:
        raise ConfigError(f"run {name}: the survey has {survey['num_teachers']} shadow teachers, the ensemble "
                          f"{num_teachers}: plan with as many shadow teachers as teachers")
    q, cost, expected = plan_queries(survey["plurality"]["top_counts"], float(merged["target_eps"]),
                                     float(merged["delta"]), max_queries,
                                     delta_share=float(merged["threshold_delta_share"]))
    surveyed = len(survey["plurality"]["top_counts"])
    return q, {"queries": q, "sigma": cost.sigma, "threshold": cost.threshold,
               "basis": f"queries: auto, planned from the shadow teachers' agreement on {surveyed} public "
                        f"utterances: {expected:.1f} expected labels"}


def resolve_entry(name: str, entry: Mapping, defaults: Mapping, num_teachers: int, survey: Optional[Mapping] = None,
                  max_queries: int = 1000) -> RunSettings:
    """An entry with its defaults, for ``num_teachers`` teachers. ``survey``: a public (shadow-teacher) agreement
    survey, for ``queries: auto``; ``max_queries``: the most queries it may plan (the public set's size)."""
    merged = {**ENTRY_DEFAULTS, **(defaults or {}), **(entry or {})}
    mech = merged.get("mechanism")
    if mech not in MECHANISMS:
        raise ConfigError(f"run {name}: mechanism must be one of {MECHANISMS}, got {mech!r}")
    _check_keys(name, merged, mech)
    planned = None
    if mech == "plurality":
        merged["level"] = (entry or {}).get("level", "utterance")
        if merged["level"] != "utterance":
            raise ConfigError(f"run {name}: plurality counts whole transcripts: level must be utterance")
        if merged["queries"] == "auto":
            merged["queries"], planned = _auto_queries(name, merged, survey, num_teachers, max_queries)
        if merged["queries"] is None or int(merged["queries"]) < 1:
            raise ConfigError(f"run {name}: plurality needs queries: N (>= 1) or auto, the number of queries fixed "
                              "in advance")
    elif merged["queries"] is not None:
        raise ConfigError(f"run {name}: queries applies to plurality; noisy-max runs stop on their "
                          "data-independent cost (limit them with max_utterances)")
    if merged["level"] not in LEVELS:
        raise ConfigError(f"run {name}: level must be one of {LEVELS}, got {merged['level']!r}")
    if merged["vote"] not in ("hard", "soft"):
        raise ConfigError(f"run {name}: vote must be hard or soft")
    if merged["select"] not in SELECTIONS:
        raise ConfigError(f"run {name}: select must be one of {SELECTIONS}, got {merged['select']!r}")
    if merged.get("target_eps") is None or not float(merged["target_eps"]) > 0:
        raise ConfigError(f"run {name}: target_eps must be a positive number")
    target, delta = float(merged["target_eps"]), float(merged["delta"])
    if not 0 < delta < 1:
        raise ConfigError(f"run {name}: delta must be in (0, 1)")
    queries = None if merged["queries"] is None else int(merged["queries"])
    noise = {key: _scaled(merged, key, num_teachers, name) for key in NOISE_KEYS[mech]}
    calibration = None
    given = [v for v in noise.values() if v is not None]
    if merged.get("calibrate") is not None or (mech == "plurality" and not given):
        noise, calibration = _calibrate(name, mech, merged.get("calibrate"), target, delta, num_teachers, queries,
                                        float(merged["threshold_delta_share"]))
        calibration = planned or calibration
    missing = [key for key, v in noise.items() if v is None]
    if missing:
        raise ConfigError(f"run {name}: {mech} needs {missing} (or *_over_k, or calibrate)")
    s = RunSettings(
        name=name, mechanism=mech, level=merged["level"], target_eps=target, delta=delta, noise=noise,
        vote=merged["vote"], stop_at_budget=bool(merged["stop_at_budget"]), conversion=merged["conversion"],
        max_symbols_per_frame=int(merged["max_symbols_per_frame"]), batch_size=int(merged["batch_size"]),
        nbest=int(merged["nbest"]), beam_size=int(merged["beam_size"]),
        max_utterances=None if merged["max_utterances"] is None else int(merged["max_utterances"]),
        seed=None if merged["seed"] is None else int(merged["seed"]), calibration=calibration, queries=queries,
        select=merged["select"], threshold_delta_share=float(merged["threshold_delta_share"]))
    if mech == "plurality":
        try:
            cost = plurality_cost(noise["sigma"], noise["threshold"], queries, delta)
        except ValueError as e:
            raise ConfigError(f"run {name}: {e}") from None
        if cost.eps > target + 1e-9:
            raise ConfigError(f"run {name}: {queries} queries at sigma {noise['sigma']:g}, T {noise['threshold']:g} "
                              f"cost eps {cost.eps:.4g} > target_eps {target:g}")
    return s


def make_aggregator(s: RunSettings, seed: Optional[int] = None):
    """The mechanism of an entry. Noise from the OS unless a seed is fixed (then per-entry: seed and the name)."""
    seed = s.seed if seed is None else seed
    rng = None
    if seed is not None:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(s.name.encode())]))
    if s.mechanism == "gnmax":
        return GNMax(s.noise["sigma"], rng=rng)
    if s.mechanism == "lnmax":
        return LNMax(s.noise["laplace_scale"], rng=rng)
    if s.mechanism == "plurality":
        return ThresholdedPlurality(s.noise["sigma"], s.noise["threshold"], rng=rng)
    return ConfidentGNMax(s.noise["sigma1"], s.noise["threshold"], s.noise["sigma2"], rng=rng)


def query_order(s: RunSettings, durations: Mapping[str, float]) -> list:
    """The public utterances a run queries, in order: a public choice (ids, or durations of public audio)."""
    utts = sorted(durations, key=lambda u: u.encode("utf-8"))
    if s.select == "shortest":
        utts = sorted(utts, key=lambda u: durations[u])  # stable: ties stay in id order
    limit = s.queries if s.mechanism == "plurality" else s.max_utterances
    return utts if limit is None else utts[:limit]
