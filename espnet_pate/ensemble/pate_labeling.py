"""Recipe stage 4: noisy ensemble labelling of public_unlabeled, one release per entry of conf/pate.yaml.

For each entry (a mechanism, a level, a target epsilon and its noise) this writes, under ``OUT/<name>/``:

* ``text``: Kaldi text of the pseudo-transcripts of the labelled utterances (what the student trains on);
* ``privacy_report.json`` and ``privacy_report.md``: every figure of the release (below);
* ``privacy.json``: the fields ``espnet_pate.report.results`` reads, for the student's results row.

and records the release in ``OUT/ledger.jsonl`` first.

Release protocol (crash-safe, never pays twice):

1. The release id is a hash of the entry's settings and inputs (teacher checkpoints, the wav.scp of the public
   data, the public model for utterance-level candidates, the privacy unit, a fixed seed if any).
2. If the ledger already holds that id: the recorded labels are reused (``text`` must exist with the recorded
   SHA-256). A run killed after recording but before writing ``text`` left the labels in ``OUT/<name>/.pending``:
   they are moved into place; nothing is spent again, nothing is decoded again.
3. Otherwise the teachers decode; the labels and their cost go to ``.pending`` (fsync-ed); the release is recorded
   in the ledger (refused with ``BudgetExceededError`` if the ledger's total budget would be exceeded: nothing is
   released, and the pending draw is kept so a rerun cannot re-roll the noise); then ``text`` is moved into place
   (atomic rename) and the reports are written. A pending draw of other settings was never recorded nor released
   and is deleted.

Budget stopping (``accounting`` and ``stop_at_budget`` in the entry):

* The runtime ``PrivacyBudget`` (privacy/budget.py) checks the entry's target epsilon before every query and stops
  the run at the first query that does not fit; utterances in progress are dropped (their cost stays spent).
* ``accounting: data_dependent`` (default): the budget, the ledger and the headline epsilon use the
  data-dependent RDP bound (Papernot et al. 2017/2018). Then the epsilon *and the stopping point* (how many
  utterances got labels) depend on the sensitive votes. They are not released through smooth sensitivity here:
  the report marks the figure as data-dependent and gives the data-independent figure of the same queries
  beside it (the valid worst-case guarantee). This is the only setting in which PATE labels anything at the
  recipe's K (see the report's agreement histogram and ../shared/PRIVACY.md, "The regime where PATE pays off").
* ``accounting: data_independent``: the budget stops on the data-independent cost, which depends on public
  settings and on outputs of accounted mechanisms only (for Confident-GNMax: which queries were answered), so the
  stopping point leaks nothing beyond the accounted releases and the headline epsilon is a worst-case bound.
* ``stop_at_budget: false``: decode every utterance, then let the ledger accept or refuse the whole release.

The labeller reads only ``wav.scp`` of the public data; ``text`` (the withheld true transcripts) is read after
the labels are final, to score them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import yaml

from espnet_pate.data.kaldi_dir import read_table
from espnet_pate.privacy.accounting import RunCost, confident_gnmax_cost, gnmax_cost, lnmax_cost
from espnet_pate.privacy.budget import PrivacyBudget
from espnet_pate.privacy.calibration import calibrate_confident_gnmax, calibrate_gnmax_sigma, calibrate_lnmax_scale
from espnet_pate.privacy.ledger import BudgetExceededError, PrivacyLedger, make_release_id
from espnet_pate.privacy.mechanisms import ConfidentGNMax, GNMax, LNMax
from espnet_pate.privacy.orders import as_orders, orders_id

log = logging.getLogger(__name__)

MECHANISMS = ("lnmax", "gnmax", "confident_gnmax")
LEVELS = ("token", "utterance")
ACCOUNTING = ("data_dependent", "data_independent")
UNITS = ("speaker", "utterance")
PENDING = ".pending"
REPORT_JSON, REPORT_MD, PRIVACY_JSON, TEXT = "privacy_report.json", "privacy_report.md", "privacy.json", "text"

_NOISE_KEYS = {"gnmax": ("sigma",), "lnmax": ("laplace_scale",), "confident_gnmax": ("sigma1", "threshold", "sigma2")}
_ENTRY_DEFAULTS = {
    "level": "token", "vote": "hard", "delta": 1e-5, "accounting": "data_dependent", "stop_at_budget": True,
    "conversion": "improved", "max_symbols_per_frame": 5, "batch_size": 8, "nbest": 8, "beam_size": 8,
    "max_utterances": None, "seed": None, "calibrate": None,
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
    accounting: str = "data_dependent"
    stop_at_budget: bool = True
    conversion: str = "improved"
    max_symbols_per_frame: int = 5
    batch_size: int = 8
    nbest: int = 8
    beam_size: int = 8
    max_utterances: Optional[int] = None
    seed: Optional[int] = None
    calibration: Optional[dict] = None  # how the noise was chosen, when it was calibrated

    def release_params(self) -> dict:
        """What identifies the release (everything that changes the labels or their accounting)."""
        out = asdict(self)
        out.pop("batch_size")  # only changes where a budget stop falls inside a batch: kept in the report
        if self.level == "token":
            out.pop("nbest"), out.pop("beam_size")
        else:
            out.pop("max_symbols_per_frame")
        return out


# ---------------------------------------------------------------------------------------------- config
def load_config(path: os.PathLike | str) -> dict:
    conf = yaml.safe_load(Path(path).read_text()) or {}
    for key in ("ledger", "runs"):
        if key not in conf:
            raise ConfigError(f"{path}: missing section '{key}'")
    if not isinstance(conf["runs"], dict) or not conf["runs"]:
        raise ConfigError(f"{path}: 'runs' must map run names to their settings")
    unknown = set(conf) - {"ledger", "defaults", "runs"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}")
    return conf


def _scaled(entry: dict, key: str, k: int, name: str) -> Optional[float]:
    """``key`` given absolutely or as ``key_over_k`` (a multiple of the number of teachers)."""
    rel = entry.get(f"{key}_over_k")
    if rel is not None and entry.get(key) is not None:
        raise ConfigError(f"run {name}: give {key} or {key}_over_k, not both")
    if rel is not None:
        return float(rel) * k
    return None if entry.get(key) is None else float(entry[key])


def resolve_entry(name: str, entry: Mapping, defaults: Mapping, num_teachers: int) -> RunSettings:
    merged = {**_ENTRY_DEFAULTS, **(defaults or {}), **(entry or {})}
    allowed = set(_ENTRY_DEFAULTS) | {"mechanism", "target_eps"} | {
        k for keys in _NOISE_KEYS.values() for key in keys for k in (key, f"{key}_over_k")}
    unknown = set(merged) - allowed
    if unknown:
        raise ConfigError(f"run {name}: unknown keys {sorted(unknown)}")
    mech = merged.get("mechanism")
    if mech not in MECHANISMS:
        raise ConfigError(f"run {name}: mechanism must be one of {MECHANISMS}, got {mech!r}")
    if merged["level"] not in LEVELS:
        raise ConfigError(f"run {name}: level must be one of {LEVELS}, got {merged['level']!r}")
    if merged["accounting"] not in ACCOUNTING:
        raise ConfigError(f"run {name}: accounting must be one of {ACCOUNTING}, got {merged['accounting']!r}")
    if merged["vote"] not in ("hard", "soft"):
        raise ConfigError(f"run {name}: vote must be hard or soft")
    if merged.get("target_eps") is None or not float(merged["target_eps"]) > 0:
        raise ConfigError(f"run {name}: target_eps must be a positive number")
    target, delta = float(merged["target_eps"]), float(merged["delta"])
    if not 0 < delta < 1:
        raise ConfigError(f"run {name}: delta must be in (0, 1)")
    k = num_teachers
    noise = {key: _scaled(merged, key, k, name) for key in _NOISE_KEYS[mech]}
    for keys in _NOISE_KEYS.values():
        for key in keys:
            given = merged.get(key) is not None or merged.get(f"{key}_over_k") is not None
            if key not in _NOISE_KEYS[mech] and given:
                raise ConfigError(f"run {name}: {key} does not apply to {mech}")
    calibration = None
    cal = merged.get("calibrate")
    if cal is not None:
        if not isinstance(cal, dict) or "planned_queries" not in cal:
            raise ConfigError(f"run {name}: calibrate needs {{planned_queries: N}} (data-independent calibration)")
        queries = int(cal["planned_queries"])
        if mech == "gnmax":
            noise["sigma"] = calibrate_gnmax_sigma(target, delta, queries)
        elif mech == "lnmax":
            noise["laplace_scale"] = calibrate_lnmax_scale(target, delta, queries)
        else:
            p = calibrate_confident_gnmax(target, delta, queries, k)
            noise.update(sigma1=p.sigma1, threshold=p.threshold, sigma2=p.sigma2)
        calibration = {"planned_queries": queries, "basis": "data_independent: the planned queries cannot cost "
                       "more than target_eps however the teachers vote"}
    missing = [key for key, v in noise.items() if v is None]
    if missing:
        raise ConfigError(f"run {name}: {mech} needs {missing} (or *_over_k, or calibrate)")
    return RunSettings(
        name=name, mechanism=mech, level=merged["level"], target_eps=target, delta=delta, noise=noise,
        vote=merged["vote"], accounting=merged["accounting"], stop_at_budget=bool(merged["stop_at_budget"]),
        conversion=merged["conversion"], max_symbols_per_frame=int(merged["max_symbols_per_frame"]),
        batch_size=int(merged["batch_size"]), nbest=int(merged["nbest"]), beam_size=int(merged["beam_size"]),
        max_utterances=None if merged["max_utterances"] is None else int(merged["max_utterances"]),
        seed=None if merged["seed"] is None else int(merged["seed"]), calibration=calibration)


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
    return ConfidentGNMax(s.noise["sigma1"], s.noise["threshold"], s.noise["sigma2"], rng=rng)


def run_cost(s: RunSettings, votes: np.ndarray, answered: np.ndarray, orders=None, chunk: int = 50_000) -> RunCost:
    """The realized cost of the logged queries (summed over chunks to bound memory)."""
    orders = as_orders(orders)
    n = votes.shape[0]
    dd, di, ans = np.zeros(orders.size), np.zeros(orders.size), 0
    params = None
    for i in range(0, max(n, 1), chunk):
        v, a = votes[i:i + chunk], answered[i:i + chunk]
        if s.mechanism == "gnmax":
            c = gnmax_cost(v, s.noise["sigma"], orders) if len(v) else None
        elif s.mechanism == "lnmax":
            c = lnmax_cost(v, s.noise["laplace_scale"], orders) if len(v) else None
        else:
            c = confident_gnmax_cost(v, a, s.noise["sigma1"], s.noise["threshold"], s.noise["sigma2"], orders) \
                if len(v) else None
        if c is not None:
            dd, di, ans, params = dd + c.rdp_data_dependent, di + c.rdp_data_independent, ans + c.answered, c.params
    if params is None:
        params = {k: float(v) for k, v in s.noise.items()}
    return RunCost(s.mechanism, params, n, ans, orders, dd, di)


# -------------------------------------------------------------------------------------------- reporting
def agreement_histogram(votes: np.ndarray, num_teachers: int, hard: bool) -> dict:
    """How many teachers voted for each query's plurality class (hard votes), or the plurality's share of the
    summed posteriors in K bins (soft votes)."""
    if votes.size == 0:
        return {"teachers_agreeing": list(range(1, num_teachers + 1)), "queries": [0] * num_teachers}
    top = votes.max(axis=1)
    if hard:
        counts = np.bincount(np.rint(top).astype(int), minlength=num_teachers + 1)[1:num_teachers + 1]
        return {"teachers_agreeing": list(range(1, num_teachers + 1)), "queries": counts.tolist(),
                "fraction": (counts / counts.sum()).round(4).tolist()}
    edges = np.linspace(0, num_teachers, num_teachers + 1)
    counts, _ = np.histogram(top, bins=edges)
    return {"plurality_mass_bins": edges.tolist(), "queries": counts.tolist(),
            "fraction": (counts / counts.sum()).round(4).tolist()}


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    return _sha256_bytes(path.read_bytes())


def _kaldi_text_bytes(labels: Mapping[str, str]) -> bytes:
    items = sorted(labels.items(), key=lambda kv: kv[0].encode("utf-8"))
    return "".join(f"{u} {t}\n" for u, t in items).encode("utf-8")


def _write_fsync(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def report_markdown(r: dict) -> str:
    eps = r["epsilon"]
    u = r["utterances"]
    lines = [
        f"# PATE pseudo-labels: {r['name']}", "",
        f"- mechanism: {r['mechanism']} {json.dumps(r['params'])}, level: {r['level']}, votes: {r['vote']}, "
        f"teachers: {r['num_teachers']}",
        f"- privacy unit: {r['privacy_unit']}; delta = {r['delta']:g}",
        f"- epsilon ({r['accounting']}, the figure the budget and the ledger use): **{r['epsilon_headline']:.4g}**",
        f"- data-dependent epsilon: {eps['data_dependent']:.4g} (improved conversion), "
        f"{eps['data_dependent_classic']:.4g} (classic conversion); private, not released through smooth "
        "sensitivity",
        f"- data-independent epsilon of the same queries: {eps['data_independent']:.4g} (improved), "
        f"{eps['data_independent_classic']:.4g} (classic)"
        + (f", {eps['data_independent_gaussian_exact']:.4g} (exact Gaussian composition)"
           if "data_independent_gaussian_exact" in eps else ""),
        f"- accountant: {r['accountant']}",
        f"- target epsilon {r['target_eps']:g}; budget stop: {r['budget']['basis']}; exhausted: "
        f"{r['budget']['exhausted']}",
        f"- queries: {r['queries']} ({r['answered_queries']} answered)",
        f"- utterances: {u['total']} in the public set; {u['written']} labelled in `text` "
        f"({100 * r['labelled_fraction']:.1f}%); outcomes: {json.dumps(u['outcomes'])}",
        f"- pseudo-label WER: " + ("-" if r["pseudo_label_wer"] is None else f"{r['pseudo_label_wer']:.2f}%")
        + " (labelled utterances against the withheld transcripts)",
        f"- noise seed: " + ("from the operating system" if not r["seed_fixed"]
                             else f"FIXED ({r['seed']}): reproducible experiment, NOT FOR RELEASE"),
        f"- release id {r['release_id']} in `{r['ledger']['path']}` (ledger total after it: "
        f"eps {r['ledger']['spent_eps']:.4g} of {r['ledger']['eps_budget']})", "",
        "## Teachers' agreement (private: for the operator, not for publication)", "",
    ]
    ag = r["agreement_histogram"]
    if "teachers_agreeing" in ag:
        lines += ["| teachers voting for the plurality | queries | fraction |", "|---|---|---|"]
        for a, c, f in zip(ag["teachers_agreeing"], ag["queries"], ag.get("fraction", [0] * len(ag["queries"]))):
            lines.append(f"| {a} | {c} | {f:.3f} |")
    else:
        lines += ["| plurality mass bin | queries |", "|---|---|"]
        edges = ag["plurality_mass_bins"]
        for i, c in enumerate(ag["queries"]):
            lines.append(f"| {edges[i]:g}-{edges[i + 1]:g} | {c} |")
    lines += ["", "Command:", "", "```sh", r.get("command", ""), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ driver
@dataclass
class Stage4Inputs:
    teacher_dirs: List[Path]
    data_dir: Path
    out_dir: Path
    unit: str
    public_model: Optional[Path] = None
    device: str = "cpu"
    command: str = ""


class _Context:
    """What the entries of one invocation share: the ensemble, the public n-best, encoder outputs (caches)."""

    def __init__(self, inputs: Stage4Inputs, ensemble=None, public_speech2text=None):
        import soundfile

        from espnet_pate.ensemble.teachers import TeacherEnsemble

        self.inputs = inputs
        self.ens = ensemble if ensemble is not None else TeacherEnsemble.from_dirs(inputs.teacher_dirs, inputs.device)
        self.wav_scp = read_table(Path(inputs.data_dir) / "wav.scp")
        self.wav_scp_sha256 = _sha256_file(Path(inputs.data_dir) / "wav.scp")
        self._soundfile = soundfile
        self._public = public_speech2text
        self._public_conf = None
        self._enc: Dict[str, Any] = {}
        self._enc_bytes, self.max_cache_bytes = 0, 512 * 2**20  # encoder outputs kept for the next runs
        self._cands: Dict[tuple, List[List[int]]] = {}
        self._detok = None

    def load(self, utt: str) -> np.ndarray:
        speech, _ = self._soundfile.read(self.wav_scp[utt], dtype="float32")
        return speech

    def encode(self, utts: Sequence[str]):
        """Encoder outputs of a batch (cached: every run of one invocation shares them)."""
        missing = [u for u in utts if u not in self._enc]
        fresh = dict(zip(missing, self.ens.encode_batch([self.load(u) for u in missing]))) if missing else {}
        out = [fresh[u] if u in fresh else self._enc[u] for u in utts]
        size = sum(e.numel() * e.element_size() for e in fresh.values() if e is not None)
        if self._enc_bytes + size > self.max_cache_bytes:
            self._enc, self._enc_bytes = {}, 0
        self._enc.update(fresh)
        self._enc_bytes += size
        return out

    def public(self, nbest: int, beam_size: int):
        from espnet_pate.ensemble.utterance_vote import load_public_nbest

        if self._public is not None and self._public_conf is None:  # handed in by the caller: used as it is
            return self._public
        if self._public is None or self._public_conf != (nbest, beam_size):
            if self.inputs.public_model is None:
                raise ConfigError("utterance-level runs need --public-model (candidates come from it)")
            self._public = load_public_nbest(self.inputs.public_model, nbest, beam_size, self.inputs.device)
            self._public_conf = (nbest, beam_size)
        return self._public

    def candidates(self, nbest: int, beam_size: int) -> Callable[[str], List[List[int]]]:
        from espnet_pate.ensemble.utterance_vote import public_candidates

        def get(utt):
            key = (utt, nbest, beam_size)
            if key not in self._cands:
                self._cands[key] = public_candidates(self.public(nbest, beam_size), self.load(utt), nbest)
            return self._cands[key]

        return get

    def detokenize(self, token_ids: Sequence[int]) -> str:
        if self._detok is None:
            from espnet2.text.build_tokenizer import build_tokenizer
            from espnet2.text.token_id_converter import TokenIDConverter

            args = self.ens.train_args
            token_type = getattr(args, "token_type", "bpe") if args is not None else "char"
            bpemodel = getattr(args, "bpemodel", None) if args is not None else None
            tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel) \
                if (token_type != "bpe" or bpemodel) else None
            self._detok = (TokenIDConverter(token_list=self.ens.token_list), tokenizer)
        converter, tokenizer = self._detok
        tokens = converter.ids2tokens([t for t in token_ids if t != self.ens.blank_id])
        return (tokenizer.tokens2text(tokens) if tokenizer is not None else " ".join(tokens)).strip()


def _release_inputs(ctx: _Context, s: RunSettings) -> dict:
    from espnet_pate.ensemble.teachers import MODEL_FILE, file_sha256

    inputs = {"teachers": ctx.ens.checksums or [str(d) for d in ctx.inputs.teacher_dirs],
              "public_wav_scp_sha256": ctx.wav_scp_sha256, "unit": ctx.inputs.unit}
    if s.level == "utterance":
        inputs["public_model_sha256"] = file_sha256(Path(ctx.inputs.public_model) / MODEL_FILE) \
            if ctx.inputs.public_model is not None else "injected"
    return inputs


def _decode(ctx: _Context, s: RunSettings, aggregator, utts: List[str]):
    from espnet_pate.ensemble.lockstep import LockstepDecoder
    from espnet_pate.ensemble.utterance_vote import UtteranceVoter

    budget = PrivacyBudget(s.target_eps, s.delta, basis=s.accounting, conversion=s.conversion) \
        if s.stop_at_budget else None
    if s.level == "token":
        dec = LockstepDecoder(ctx.ens, aggregator, vote=s.vote, max_symbols_per_frame=s.max_symbols_per_frame,
                              batch_size=s.batch_size)
        return dec.decode(utts, ctx.load, budget=budget, encode=ctx.encode), budget
    voter = UtteranceVoter(ctx.ens, None, aggregator, nbest=s.nbest, vote=s.vote, batch_size=s.batch_size)
    return voter.decode(utts, ctx.load, budget=budget, encode=ctx.encode,
                        candidates=ctx.candidates(s.nbest, s.beam_size)), budget


def _draw(ctx: _Context, s: RunSettings, seed: Optional[int]) -> dict:
    """Decode with noise; return the pending bundle (labels + everything the report needs but the WER)."""
    from espnet_pate.ensemble.lockstep import LABELLED

    aggregator = make_aggregator(s, seed)
    utts = sorted(ctx.wav_scp, key=lambda u: u.encode("utf-8"))
    if s.max_utterances is not None:
        utts = utts[: s.max_utterances]
    result, budget = _decode(ctx, s, aggregator, utts)
    votes, answered = result.queries.all_votes, result.queries.all_answered
    cost = run_cost(s, votes, answered)
    if budget is not None:
        spent = budget.spent_data_dependent if s.accounting == "data_dependent" else budget.spent_data_independent
        mine = cost.rdp_data_dependent if s.accounting == "data_dependent" else cost.rdp_data_independent
        if not np.allclose(spent, mine, rtol=1e-6, atol=1e-9):
            raise RuntimeError("the budget's spent curve and the logged queries disagree: accounting bug")
    labels, empty = {}, 0
    for u, r in result.utterances.items():
        if r.status == LABELLED:
            text = ctx.detokenize(r.token_ids)
            if text:
                labels[u] = text
            else:
                empty += 1
    outcomes = result.status_counts()
    if empty:
        outcomes["labelled_empty"] = empty
        outcomes[LABELLED] = outcomes.get(LABELLED, 0) - empty
    eff_seed = s.seed if seed is None else seed
    desc = aggregator.describe()
    summary = cost.summary(s.delta)
    return {
        "labels": labels,
        "rdp_data_dependent": cost.rdp_data_dependent.tolist(),
        "rdp_data_independent": cost.rdp_data_independent.tolist(),
        "orders_id": orders_id(cost.orders),
        "summary": summary,
        "queries": int(cost.queries), "answered_queries": int(cost.answered),
        "outcomes": outcomes, "total_utterances": len(ctx.wav_scp), "considered_utterances": len(utts),
        "budget": {"basis": (s.accounting if s.stop_at_budget else "none (decode all; the ledger decides)"),
                   "target_eps": s.target_eps, "exhausted": bool(result.budget_exhausted)},
        "agreement_histogram": agreement_histogram(votes, ctx.ens.num_teachers, s.vote == "hard"),
        "seed": eff_seed, "seed_fixed": bool(desc["seed_fixed"]),
    }


def _headline(s: RunSettings, bundle: dict) -> float:
    summ = bundle["summary"]
    return summ["eps"] if s.accounting == "data_dependent" else summ["eps_data_independent"]


def _write_privacy_json(out: Path, report: dict) -> None:
    """privacy.json from a release's report; rewritten when a release is reused, so it follows the current fields.
    target_epsilon is the budget the run was calibrated to: results rows meet DP-SGD's on it."""
    from espnet_pate.report.results import write_privacy_info

    write_privacy_info(out, epsilon=report["epsilon_headline"], target_epsilon=report["target_eps"],
                       delta=report["delta"], unit=report["privacy_unit"],
                       mechanism=f"PATE {report['mechanism']} ({report['level']} level, "
                                 f"{report['num_teachers']} teachers)",
                       accountant=report["accountant"], data_dependent=report["data_dependent"],
                       epsilon_data_independent=report["epsilon"]["data_independent"],
                       pseudo_label_wer=report["pseudo_label_wer"], labelled_fraction=report["labelled_fraction"],
                       not_for_release=report["not_for_release"], release_id=report["release_id"])


def _finalise(ctx: _Context, s: RunSettings, out: Path, bundle: dict, release_id: str, ledger: PrivacyLedger,
              status: str) -> dict:
    from espnet_pate.report.scoring import score_wer

    pending = out / PENDING
    if (pending / TEXT).exists():
        os.replace(pending / TEXT, out / TEXT)
    labels = read_table(out / TEXT) if (out / TEXT).stat().st_size else {}
    wer = None
    ref_path = Path(ctx.inputs.data_dir) / "text"
    if ref_path.exists() and labels:
        ref = read_table(ref_path, allow_empty_value=True)
        wer = score_wer({u: ref[u] for u in labels if u in ref}, labels)
    summ = bundle["summary"]
    eps = {"data_dependent": summ["eps"], "data_dependent_order": summ["order"],
           "data_dependent_classic": summ["eps_classic"],
           "data_independent": summ["eps_data_independent"],
           "data_independent_classic": summ["eps_data_independent_classic"]}
    if "eps_data_independent_gaussian_exact" in summ:
        eps["data_independent_gaussian_exact"] = summ["eps_data_independent_gaussian_exact"]
    headline = _headline(s, bundle)
    total = bundle["total_utterances"]
    spent_eps, _ = ledger.spent()
    report = {
        "name": s.name, "release_id": release_id, "run_status": status,
        "mechanism": s.mechanism, "params": s.noise, "level": s.level, "vote": s.vote,
        "num_teachers": ctx.ens.num_teachers, "teachers": [str(d) for d in ctx.inputs.teacher_dirs],
        "privacy_unit": ctx.inputs.unit, "delta": s.delta, "target_eps": s.target_eps,
        "accounting": s.accounting, "epsilon_headline": headline, "epsilon": eps,
        "data_dependent": s.accounting == "data_dependent",
        "epsilon_release": ("data-dependent bound: depends on the sensitive votes and is not released through "
                            "smooth sensitivity; publish the data-independent figure, or release this one with "
                            "privacy/smooth_sensitivity.py") if s.accounting == "data_dependent"
        else "data-independent bound: a worst-case guarantee",
        "accountant": summ["accountant"], "conversion": s.conversion,
        "budget": bundle["budget"], "calibration": s.calibration,
        "queries": bundle["queries"], "answered_queries": bundle["answered_queries"],
        "utterances": {"total": total, "considered": bundle["considered_utterances"], "written": len(labels),
                       "outcomes": bundle["outcomes"]},
        "labelled_fraction": len(labels) / total if total else 0.0,
        "agreement_histogram": bundle["agreement_histogram"],
        "pseudo_label_wer": None if wer is None else wer.wer,
        "pseudo_label_scores": None if wer is None else wer.as_dict(),
        "seed": bundle["seed"], "seed_fixed": bundle["seed_fixed"], "not_for_release": bundle["seed_fixed"],
        "decoding": {"max_symbols_per_frame": s.max_symbols_per_frame, "batch_size": s.batch_size,
                     **({"nbest": s.nbest, "beam_size": s.beam_size} if s.level == "utterance" else {})},
        "ensemble": ctx.ens.describe(),
        "ledger": {"path": str(ledger.path), "eps_budget": ledger.eps_budget, "delta": ledger.delta,
                   "spent_eps": spent_eps},
        "text": str(out / TEXT), "text_sha256": _sha256_file(out / TEXT),
        "command": ctx.inputs.command,
    }
    _write_fsync(out / REPORT_JSON, (json.dumps(report, indent=1, sort_keys=True, default=float) + "\n").encode())
    _write_fsync(out / REPORT_MD, report_markdown(report).encode())
    _write_privacy_json(out, report)
    shutil.rmtree(pending, ignore_errors=True)
    return report


def _save_pending(pending: Path, bundle: dict, release_id: str) -> str:
    pending.mkdir(parents=True, exist_ok=True)
    text = _kaldi_text_bytes(bundle["labels"])
    meta = {k: v for k, v in bundle.items() if k != "labels"}
    meta.update(release_id=release_id, text_sha256=_sha256_bytes(text))
    _write_fsync(pending / TEXT, text)
    _write_fsync(pending / "meta.json", json.dumps(meta, default=float).encode())
    return meta["text_sha256"]


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _load_pending(pending: Path) -> Optional[dict]:
    """The pending bundle's meta if it is complete: its labels in ``.pending/text``, or already moved to
    ``text`` (a run killed after the rename), with the recorded SHA-256."""
    try:
        meta = json.loads((pending / "meta.json").read_text())
        text = pending / TEXT if (pending / TEXT).exists() else pending.parent / TEXT
        text_ok = _sha256_file(text) == meta["text_sha256"]
    except (OSError, ValueError, KeyError):
        return None
    return meta if text_ok else None


def label_entry(ctx: _Context, s: RunSettings, ledger: PrivacyLedger, seed: Optional[int] = None) -> dict:
    """One release (see the module docstring for the protocol); returns its report."""
    out = Path(ctx.inputs.out_dir) / s.name
    out.mkdir(parents=True, exist_ok=True)
    pending = out / PENDING
    eff_seed = s.seed if seed is None else seed
    params = s.release_params()
    params["seed"] = eff_seed
    what = f"pate_labels/{s.name}"
    release_id = make_release_id(what, s.mechanism, params, _release_inputs(ctx, s))
    recorded = ledger.get(release_id)
    if recorded is not None:
        if (out / TEXT).exists() and _sha256_file(out / TEXT) == recorded.outputs:
            meta = _load_pending(pending)
            if (out / REPORT_JSON).exists():
                report = json.loads((out / REPORT_JSON).read_text())
                if report.get("release_id") == release_id and meta is None:
                    log.info("%s: release %s already recorded; reusing %s (nothing spent)", s.name, release_id,
                             out / TEXT)
                    report["run_status"] = "reused"
                    _write_privacy_json(out, report)
                    return report
            if meta is not None:  # killed after the rename, before the reports
                return _finalise(ctx, s, out, meta, release_id, ledger, "resumed")
            raise RuntimeError(f"{out}: the labels of release {release_id} are in place but its report is lost; "
                               f"restore {REPORT_JSON} or remove {out / TEXT} and this release's meta")
        meta = _load_pending(pending)
        if meta is not None and meta["release_id"] == release_id and meta["text_sha256"] == recorded.outputs:
            log.warning("%s: release %s was recorded but its text not written (interrupted run); completing it "
                        "from %s without spending again", s.name, release_id, pending)
            return _finalise(ctx, s, out, meta, release_id, ledger, "resumed")
        raise RuntimeError(
            f"{out}: release {release_id} is recorded in {ledger.path} but its labels are lost (no {TEXT} and no "
            f"{PENDING} with SHA-256 {recorded.outputs}). Decoding again would draw fresh noise: a new release that "
            "must be paid for. Restore the labels, or change the run's name or seed to pay for a new one.")
    meta = _load_pending(pending)
    if meta is not None and meta["release_id"] != release_id:
        log.warning("%s: discarding an unrecorded draw of other settings in %s (never released)", s.name, pending)
        shutil.rmtree(pending)
        meta = None
    if meta is None:
        shutil.rmtree(pending, ignore_errors=True)
        bundle = _draw(ctx, s, seed)
        text_sha = _save_pending(pending, bundle, release_id)
        meta = _load_pending(pending)
    else:
        log.warning("%s: recording the draw left unrecorded by an interrupted run (%s)", s.name, pending)
        text_sha = meta["text_sha256"]
    curve = meta["rdp_data_dependent"] if s.accounting == "data_dependent" else meta["rdp_data_independent"]
    summ = meta["summary"]
    ledger.record(what, s.mechanism, params, curve, meta["queries"], release_id=release_id,
                  data_dependent=s.accounting == "data_dependent", outputs=text_sha,
                  details={"level": s.level, "unit": ctx.inputs.unit, "eps": summ["eps"],
                           "eps_data_independent": summ["eps_data_independent"], "delta": s.delta,
                           "answered_queries": meta["answered_queries"],
                           "labelled_utterances": _count_lines(pending / TEXT),
                           "budget": meta["budget"], "seed_fixed": meta["seed_fixed"]})
    return _finalise(ctx, s, out, meta, release_id, ledger, "new")


def agreement_survey(inputs: Stage4Inputs, num_utts: int = 100, nbest: int = 8, beam_size: int = 8,
                     levels: Sequence[str] = LEVELS, ensemble=None) -> dict:
    """Noise-free agreement histograms of the teachers on ``num_utts`` public utterances (evenly spread), to
    choose K and the noise before spending anything. Nothing is released and nothing is recorded: the result
    describes the sensitive votes and is for the operator only (PRIVACY.md: measure it before choosing)."""
    from espnet_pate.ensemble.lockstep import LockstepDecoder, NoiselessPlurality
    from espnet_pate.ensemble.utterance_vote import UtteranceVoter

    ctx = _Context(inputs, ensemble)
    ids = sorted(ctx.wav_scp, key=lambda u: u.encode("utf-8"))
    utts = ids[:: max(1, len(ids) // max(num_utts, 1))][:num_utts]
    out = {"num_teachers": ctx.ens.num_teachers, "utterances": len(utts), "private": True}
    if "token" in levels:
        res = LockstepDecoder(ctx.ens, NoiselessPlurality()).decode(utts, ctx.load, encode=ctx.encode)
        votes, released = res.queries.all_votes, res.queries.all_released
        out["token"] = {"queries": len(votes), "queries_per_utterance": len(votes) / max(len(utts), 1),
                        "all": agreement_histogram(votes, ctx.ens.num_teachers, True),
                        "blank_released": agreement_histogram(votes[released == 0], ctx.ens.num_teachers, True),
                        "token_released": agreement_histogram(votes[released != 0], ctx.ens.num_teachers, True)}
    if "utterance" in levels:
        voter = UtteranceVoter(ctx.ens, None, NoiselessPlurality(), nbest=nbest)
        res = voter.decode(utts, ctx.load, encode=ctx.encode, candidates=ctx.candidates(nbest, beam_size))
        out["utterance"] = {"queries": res.queries.num_queries,
                            "single_candidate (free)": len(utts) - res.queries.num_queries,
                            "all": agreement_histogram(res.queries.all_votes, ctx.ens.num_teachers, True)}
    return out


def run_stage4(config: os.PathLike | str | dict, inputs: Stage4Inputs, only: Optional[Sequence[str]] = None,
               seed: Optional[int] = None, ensemble=None, public_speech2text=None) -> List[dict]:
    """Every entry of the configuration (or those named in ``only``), in order; returns their reports.

    An entry the ledger refuses raises ``BudgetExceededError`` after the entries before it are done.
    """
    conf = load_config(config) if not isinstance(config, dict) else config
    if inputs.unit not in UNITS:
        raise ConfigError(f"privacy unit must be one of {UNITS}, got {inputs.unit!r}")
    ctx = _Context(inputs, ensemble, public_speech2text)
    lconf = conf["ledger"]
    Path(inputs.out_dir).mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(str(Path(inputs.out_dir) / "ledger.jsonl"), eps_budget=float(lconf["eps_budget"]),
                           delta=float(lconf["delta"]))
    names = list(conf["runs"]) if only is None else list(only)
    missing = [n for n in names if n not in conf["runs"]]
    if missing:
        raise ConfigError(f"no runs named {missing}; the configuration has {list(conf['runs'])}")
    settings = [resolve_entry(n, conf["runs"][n], conf.get("defaults") or {}, ctx.ens.num_teachers) for n in names]
    reports = []
    for s in settings:
        log.info("stage 4: %s (%s, %s level, target eps %g)", s.name, s.mechanism, s.level, s.target_eps)
        reports.append(label_entry(ctx, s, ledger, seed))
    return reports
