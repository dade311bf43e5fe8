"""Recipe stage 4: noisy ensemble labelling of public_unlabeled, one release per entry of conf/pate.yaml.

The seam: plan (pate_plan: settings and public choices) -> label (here: the teachers decode, lock-step or each
on its own) -> release (pate_release: mechanism, ledger, pending protocol) -> report (pate_report). For each entry
this writes, under ``OUT/<name>/``: ``text`` (the pseudo-transcripts the student trains on),
``privacy_report.{json,md}`` and ``privacy.json``, after recording the release in the one ledger of the sensitive
data set.

Mechanisms: ``plurality`` (each teacher's own greedy 1-best, the thresholded plurality of the strings: it can
carry words the public model lacks; exactly ``queries`` queries, paid whether answered or not) and the noisy-max
mechanisms ``gnmax``, ``lnmax``, ``confident_gnmax`` over a fixed public class set (token level: the token list;
utterance level: the public model's n-best), which stop on their data-independent cost. The released claim is
always data-independent; data-dependent bounds are reported as not released, and the teachers' agreement as
operator diagnostics.

The labeller reads only ``wav.scp`` of the public data; ``text`` (the withheld true transcripts) is read after
the labels are final, to score them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from espnet_pate.data.kaldi_dir import read_table
from espnet_pate.ensemble.label_context import LabelContext, Stage4Inputs  # noqa: F401 -- Stage4Inputs re-exported
from espnet_pate.ensemble.pate_plan import (  # noqa: F401 -- the stage's public names, re-exported
    LEVELS, MECHANISMS, ConfigError, RunSettings, expand_runs, load_config, make_aggregator, query_order,
    release_names, resolve_entry,
)
from espnet_pate.ensemble.pate_release import PENDING, TEXT, release_entry  # noqa: F401
from espnet_pate.ensemble.pate_report import OPERATOR_NOTE, agreement_histogram, agreement_of_counts
from espnet_pate.privacy.accounting import RunCost, confident_gnmax_cost, gnmax_cost, lnmax_cost
from espnet_pate.privacy.budget import PrivacyBudget
from espnet_pate.privacy.conversion import eps_from_rdp
from espnet_pate.privacy.digests import file_sha256
from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.privacy.orders import as_orders, orders_id
from espnet_pate.privacy.plurality import plurality_cost
from espnet_pate.privacy.units import PRIVACY_UNITS

log = logging.getLogger(__name__)


def run_cost(s: RunSettings, votes: np.ndarray, answered: np.ndarray, orders=None, chunk: int = 50_000) -> RunCost:
    """The cost of the logged noisy-max queries (summed over chunks to bound memory)."""
    orders = as_orders(orders)
    n = votes.shape[0]
    dd, di, ans = np.zeros(orders.size), np.zeros(orders.size), 0
    params = None
    for i in range(0, max(n, 1), chunk):
        v, a = votes[i:i + chunk], answered[i:i + chunk]
        if not len(v):
            continue
        if s.mechanism == "gnmax":
            c = gnmax_cost(v, s.noise["sigma"], orders)
        elif s.mechanism == "lnmax":
            c = lnmax_cost(v, s.noise["laplace_scale"], orders)
        else:
            c = confident_gnmax_cost(v, a, s.noise["sigma1"], s.noise["threshold"], s.noise["sigma2"], orders)
        dd, di, ans, params = dd + c.rdp_data_dependent, di + c.rdp_data_independent, ans + c.answered, c.params
    if params is None:
        params = {k: float(v) for k, v in s.noise.items()}
    return RunCost(s.mechanism, params, n, ans, orders, dd, di)


# ------------------------------------------------------------------------------------------------ driver
def _release_inputs(ctx: LabelContext, s: RunSettings) -> dict:
    from espnet_pate.ensemble.teachers import MODEL_FILE

    inputs = {"teachers": ctx.ens.checksums or [str(d) for d in ctx.inputs.teacher_dirs],
              "public_wav_scp_sha256": ctx.wav_scp_sha256, "unit": ctx.inputs.unit}
    if s.level == "utterance" and s.mechanism != "plurality":
        inputs["public_model_sha256"] = file_sha256(Path(ctx.inputs.public_model) / MODEL_FILE) \
            if ctx.inputs.public_model is not None else "injected"
    return inputs


def _noisy_max_result(ctx: LabelContext, s: RunSettings, aggregator, utts: List[str]):
    from espnet_pate.ensemble.lockstep import LockstepDecoder
    from espnet_pate.ensemble.utterance_vote import UtteranceVoter

    budget = PrivacyBudget(s.target_eps, s.delta, basis="data_independent", conversion=s.conversion) \
        if s.stop_at_budget else None
    if s.level == "token":
        dec = LockstepDecoder(ctx.ens, aggregator, vote=s.vote, max_symbols_per_frame=s.max_symbols_per_frame,
                              batch_size=s.batch_size)
        return dec.decode(utts, ctx.load, budget=budget, encode=ctx.encode), budget
    voter = UtteranceVoter(ctx.ens, None, aggregator, nbest=s.nbest, vote=s.vote, batch_size=s.batch_size)
    return voter.decode(utts, ctx.load, budget=budget, encode=ctx.encode,
                        candidates=ctx.candidates(s.nbest, s.beam_size),
                        loglik=ctx.loglik(s.nbest, s.beam_size)), budget


def _draw_noisy_max(ctx: LabelContext, s: RunSettings, aggregator, utts: List[str]) -> dict:
    from espnet_pate.ensemble.lockstep import LABELLED

    result, budget = _noisy_max_result(ctx, s, aggregator, utts)
    votes, answered = result.queries.all_votes, result.queries.all_answered
    cost = run_cost(s, votes, answered)
    if budget is not None and not np.allclose(budget.spent_data_independent, cost.rdp_data_independent,
                                              rtol=1e-6, atol=1e-9):
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
    eps, order = eps_from_rdp(cost.rdp_data_independent, s.delta, cost.orders, s.conversion)
    summ = cost.summary(s.delta)
    accountant = f"RDP on order grid {orders_id(cost.orders)}, {s.conversion} conversion (dp_accounting)"
    if "eps_data_independent_gaussian_exact" in summ:
        accountant += (f"; exact Gaussian composition of the same queries: "
                       f"{summ['eps_data_independent_gaussian_exact']:.4g}")
    stop = ("data-independent cost (target_eps)" if s.stop_at_budget else "none: every selected utterance")
    return {"labels": labels, "rdp": cost.rdp_data_independent.tolist(), "eps_extra": 0.0, "delta_extra": 0.0,
            "claim": {"epsilon": eps, "order": order, "accountant": accountant},
            "not_released": {"epsilon_data_dependent": summ["eps"],
                             "epsilon_data_dependent_classic": summ["eps_classic"]},
            "queries": int(cost.queries), "answered_queries": int(cost.answered), "outcomes": outcomes,
            "stop": stop + ("; exhausted" if result.budget_exhausted else ""),
            "agreement_histogram": agreement_histogram(votes, ctx.ens.num_teachers, s.vote == "hard")}


def _draw_plurality(ctx: LabelContext, s: RunSettings, aggregator, utts: List[str]) -> dict:
    from espnet_pate.ensemble.own_transcripts import agreement_counts

    labels, outcomes, tops = {}, {"labelled": 0, "refused": 0, "too_short": 0}, []
    for n, (u, texts) in enumerate(ctx.own_transcripts(utts, s.max_symbols_per_frame, s.batch_size), 1):
        if texts is None:
            outcomes["too_short"] += 1  # asked and paid: no teacher output, nothing released
            continue
        tops.append(int(agreement_counts([texts])[0]))
        released = aggregator.release(texts)
        if released is None:
            outcomes["refused"] += 1
        else:
            labels[u] = released
            outcomes["labelled"] += 1
        if n % s.batch_size == 0 or n == len(utts):
            log.info("%s: %d of %d queries asked, %d released", s.name, n, len(utts), len(labels))
    cost = plurality_cost(s.noise["sigma"], s.noise["threshold"], len(utts), s.delta)
    pld = plurality_cost(s.noise["sigma"], s.noise["threshold"], len(utts), s.delta, accountant="pld")
    summ = cost.summary()
    return {"labels": labels, "rdp": cost.rdp.tolist(), "eps_extra": cost.eps_extra, "delta_extra": cost.delta_extra,
            "claim": {"epsilon": cost.eps, "beta": cost.beta,
                      "accountant": summ["accountant"] + f"; PLD of the same queries: {pld.eps:.4g}"},
            "not_released": None, "queries": len(utts), "answered_queries": len(labels), "outcomes": outcomes,
            "stop": f"fixed: {len(utts)} queries (select: {s.select})",
            "agreement_histogram": agreement_of_counts(np.asarray(tops), ctx.ens.num_teachers)}


def _draw(ctx: LabelContext, s: RunSettings, seed: Optional[int]) -> dict:
    """Decode with noise; return the pending bundle (labels + everything the report needs but the WER)."""
    aggregator = make_aggregator(s, seed)
    durations = ctx.durations() if s.select == "shortest" else {u: 0.0 for u in ctx.wav_scp}
    utts = query_order(s, durations)
    draw = _draw_plurality if s.mechanism == "plurality" else _draw_noisy_max
    bundle = draw(ctx, s, aggregator, utts)
    desc = aggregator.describe()
    bundle.update(total_utterances=len(ctx.wav_scp), considered_utterances=len(utts), unit=ctx.inputs.unit,
                  seed=s.seed if seed is None else seed, seed_fixed=bool(desc["seed_fixed"]))
    return bundle


def _report(ctx: LabelContext, s: RunSettings, ledger: PrivacyLedger, meta: dict, release_id: str, status: str) -> dict:
    from espnet_pate.report.scoring import score_wer

    out = Path(ctx.inputs.out_dir) / s.name
    labels = read_table(out / TEXT) if (out / TEXT).stat().st_size else {}
    wer = None
    ref_path = Path(ctx.inputs.data_dir) / "text"
    if ref_path.exists() and labels:
        ref = read_table(ref_path, allow_empty_value=True)
        wer = score_wer({u: ref[u] for u in labels if u in ref}, labels)
    total = meta["total_utterances"]
    spent_eps, _ = ledger.spent()
    claim = dict(meta["claim"], delta=s.delta, unit=meta["unit"], data_dependent=False)
    return {
        "name": s.name, "release_id": release_id, "run_status": status, "public_data": ctx.public_data,
        "mechanism": s.mechanism, "params": s.noise, "level": s.level, "vote": s.vote,
        "num_teachers": ctx.ens.num_teachers, "teachers": [str(d) for d in ctx.inputs.teacher_dirs],
        "claim": claim, "not_released": meta["not_released"], "target_eps": s.target_eps,
        "stop": meta["stop"], "calibration": s.calibration, "select": s.select,
        "queries": meta["queries"], "answered_queries": meta["answered_queries"],
        "utterances": {"total": total, "considered": meta["considered_utterances"], "written": len(labels),
                       "outcomes": meta["outcomes"]},
        "labelled_fraction": len(labels) / total if total else 0.0,
        "operator_diagnostics": {"note": OPERATOR_NOTE, "agreement_histogram": meta["agreement_histogram"]},
        "pseudo_label_wer": None if wer is None else wer.wer,
        "pseudo_label_scores": None if wer is None else wer.as_dict(),
        "seed": meta["seed"], "seed_fixed": meta["seed_fixed"], "not_for_release": meta["seed_fixed"],
        "decoding": {"max_symbols_per_frame": s.max_symbols_per_frame, "batch_size": s.batch_size,
                     **({"nbest": s.nbest, "beam_size": s.beam_size}
                        if s.level == "utterance" and s.mechanism != "plurality" else {})},
        "ensemble": ctx.ens.describe(),
        "ledger": {"path": str(ledger.path), "eps_budget": ledger.eps_budget, "delta": ledger.delta,
                   "spent_eps": spent_eps},
        "command": ctx.inputs.command,
    }


def _planned_cost(s: RunSettings) -> Optional[tuple]:
    """(rdp, eps_extra, delta_extra) of a release whose settings fix its cost: the plurality's fixed queries."""
    if s.mechanism != "plurality":
        return None
    cost = plurality_cost(s.noise["sigma"], s.noise["threshold"], s.queries, s.delta)
    return cost.rdp.tolist(), cost.eps_extra, cost.delta_extra


def label_entry(ctx: LabelContext, s: RunSettings, ledger: PrivacyLedger, seed: Optional[int] = None) -> dict:
    """One release (see pate_release for the protocol); returns its report."""
    params = s.release_params()
    params["seed"] = s.seed if seed is None else seed
    return release_entry(s, Path(ctx.inputs.out_dir) / s.name, ledger, _release_inputs(ctx, s), params,
                         draw=lambda: _draw(ctx, s, seed),
                         finish=lambda meta, rid, status: _report(ctx, s, ledger, meta, rid, status),
                         annotate={"public_data": ctx.public_data}, planned=_planned_cost(s))


def agreement_survey(inputs: Stage4Inputs, num_utts: int = 100, nbest: int = 8, beam_size: int = 8,
                     levels: Sequence[str] = ("token", "utterance", "plurality"), ensemble=None,
                     shadow: bool = False, withheld_words: Optional[Sequence[str]] = None,
                     withheld_utts: int = 120) -> dict:
    """Noise-free agreement of the teachers on ``num_utts`` public utterances (evenly spread). Nothing is released
    and nothing recorded. With ``withheld_words``, also the plurality's agreement on up to ``withheld_utts``
    utterances whose true transcript (the data's text, evaluation only) holds one and as many without. With
    shadow teachers (trained on shards of public data, ``shadow=True``) the result is public and may size the
    settings; with the real teachers it describes the sensitive votes: an operator
    diagnostic that must never size a setting (PRIVACY.md)."""
    from espnet_pate.ensemble.lockstep import LockstepDecoder, NoiselessPlurality
    from espnet_pate.ensemble.own_transcripts import agreement_counts
    from espnet_pate.ensemble.utterance_vote import UtteranceVoter

    ctx = LabelContext(inputs, ensemble)
    ids = sorted(ctx.wav_scp, key=lambda u: u.encode("utf-8"))
    utts = ids[:: max(1, len(ids) // max(num_utts, 1))][:num_utts]
    K = ctx.ens.num_teachers
    out = {"num_teachers": K, "utterances": len(utts), "teachers": "shadow (trained on public data): public"
           if shadow else OPERATOR_NOTE, "private": not shadow}
    if "token" in levels:
        res = LockstepDecoder(ctx.ens, NoiselessPlurality()).decode(utts, ctx.load, encode=ctx.encode)
        votes, released = res.queries.all_votes, res.queries.all_released
        out["token"] = {"queries": len(votes), "queries_per_utterance": len(votes) / max(len(utts), 1),
                        "all": agreement_histogram(votes, K, True),
                        "blank_released": agreement_histogram(votes[released == 0], K, True),
                        "token_released": agreement_histogram(votes[released != 0], K, True)}
    if "utterance" in levels:
        voter = UtteranceVoter(ctx.ens, None, NoiselessPlurality(), nbest=nbest)
        res = voter.decode(utts, ctx.load, encode=ctx.encode, candidates=ctx.candidates(nbest, beam_size))
        out["utterance"] = {"queries": res.queries.num_queries,
                            "single_candidate (free)": len(utts) - res.queries.num_queries,
                            "all": agreement_histogram(res.queries.all_votes, K, True)}
    if "plurality" in levels:
        tops = agreement_counts([texts for _, texts in ctx.own_transcripts(utts) if texts is not None])
        out["plurality"] = {"queries": len(tops), "top_counts": tops.tolist(),
                            "all": agreement_of_counts(tops, K)}
    if withheld_words is not None:
        from espnet_pate.ensemble.withheld_agreement import withheld_agreement

        text = read_table(Path(inputs.data_dir) / "text")
        out["withheld_agreement"] = withheld_agreement(ctx, text, withheld_words, withheld_utts)
    return out


def run_stage4(config, inputs: Stage4Inputs, ledger: PrivacyLedger, only: Optional[Sequence[str]] = None,
               seed: Optional[int] = None, ensemble=None, public_speech2text=None,
               plan_survey: Optional[dict] = None, name_suffix: str = "", repeats: int = 1) -> List[dict]:
    """Every entry of the configuration (or those named in ``only``), in order, recorded in ``ledger`` (the one
    ledger of the sensitive data set); returns their reports. ``plan_survey``: the shadow teachers' agreement
    survey (public) that ``queries: auto`` entries are planned from. ``name_suffix`` and ``repeats`` name the
    releases (``release_names``): each repeat is a release of its own, with fresh noise.

    An entry the ledger refuses raises ``BudgetExceededError`` after the entries before it are done.
    """
    conf = load_config(config) if not isinstance(config, dict) else dict(config, runs=expand_runs(config["runs"]))
    if inputs.unit not in PRIVACY_UNITS:
        raise ConfigError(f"privacy unit must be one of {PRIVACY_UNITS}, got {inputs.unit!r}")
    names = list(conf["runs"]) if only is None else list(only)
    missing = [n for n in names if n not in conf["runs"]]
    if missing:
        raise ConfigError(f"no runs named {missing}; the configuration has {list(conf['runs'])}")
    ctx = LabelContext(inputs, ensemble, public_speech2text)
    Path(inputs.out_dir).mkdir(parents=True, exist_ok=True)
    settings = [resolve_entry(r, conf["runs"][n], conf.get("defaults") or {}, ctx.ens.num_teachers, plan_survey,
                              len(ctx.wav_scp)) for r, n in release_names(names, name_suffix, repeats).items()]
    reports = []
    for i, s in enumerate(settings):
        log.info("stage 4 [%d/%d]: %s (%s, %s level, target eps %g)", i + 1, len(settings), s.name, s.mechanism,
                 s.level, s.target_eps)
        reports.append(label_entry(ctx, s, ledger, seed))
    return reports
