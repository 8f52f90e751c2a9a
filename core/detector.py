"""Judges sessions with a model and turns answers into verdicts and alerts.

Kafka-free: the Faust worker, replay and the offline ``scan`` all call this with
their own model client (gRPC or in process).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from systerns.core.features import vectorize_many
from systerns.core.sessions import Judgement
from systerns.core.verdicts import (
    ModelAnswer,
    VerdictPolicy,
    build_alert,
    build_verdict,
    reasons_for,
)

log = structlog.get_logger(__name__)
MAX_KNOWN_PROCESSES = 50_000


class ModelClientT(Protocol):
    """Anything that scores a feature batch: the gRPC client or a local model."""

    def predict(self, features: np.ndarray) -> Sequence[object]: ...


@dataclass(slots=True)
class Outcome:
    """The verdict of one judgement and the alerts it raised."""

    verdict: dict
    alerts: list[dict] = field(default_factory=list)


def as_answer(pred: object) -> ModelAnswer:
    """Read a client's prediction (any object with the fields) as a ModelAnswer."""
    return ModelAnswer(
        behaves_like=str(pred.behaves_like),  # type: ignore[attr-defined]
        confidence=float(pred.confidence),  # type: ignore[attr-defined]
        malicious=float(pred.malicious),  # type: ignore[attr-defined]
        model_version=int(pred.model_version),  # type: ignore[attr-defined]
        top3=tuple(getattr(pred, "top3", ()) or ()),
    )


class Detector:
    """Scores judgements in one model call and builds verdicts and alerts.

    Args:
        model: the model client.
        model_name: the served model's name (recorded in every verdict).
        policy: alert thresholds.
    """

    def __init__(self, model: ModelClientT, model_name: str = "systerns",
                 policy: VerdictPolicy | None = None) -> None:
        self.model = model
        self.model_name = model_name
        self.policy = policy or VerdictPolicy()
        self._names: OrderedDict[str, str] = OrderedDict()

    def remember(self, session: dict) -> None:
        """Keep the name of a process so its children's alerts name their parent."""
        key = f"{session['host']}/{session['container_id']}/{session['pid']}"
        self._names[key] = session["comm"]
        self._names.move_to_end(key)
        while len(self._names) > MAX_KNOWN_PROCESSES:
            self._names.popitem(last=False)

    def parent_name(self, session: dict) -> str:
        key = f"{session['host']}/{session['container_id']}/{session.get('ppid', 0)}"
        return self._names.get(key, "")

    def judge(self, judgements: Sequence[Judgement]) -> list[Outcome]:
        """Score judgements in one batch; the model's errors propagate.

        Raises:
            ModelError: the model call failed (the caller retries or dead-letters).
        """
        if not judgements:
            return []
        for j in judgements:
            self.remember(j.session)
        features = vectorize_many([j.session for j in judgements])
        preds = self.model.predict(features)
        return [self.decide(j, as_answer(p)) for j, p in zip(judgements, preds,
                                                               strict=True)]

    def decide(self, j: Judgement, answer: ModelAnswer) -> Outcome:
        """Verdict and alerts for one judgement given the model's answer."""
        alerts = [
            build_alert(j.session, answer, reason, j.trigger,
                        model_name=self.model_name,
                        parent_name=self.parent_name(j.session))
            for reason in reasons_for(j.session, answer, self.policy)
        ]
        verdict = build_verdict(j.session, answer, j.trigger, j.final,
                                self.model_name, [a["alert_id"] for a in alerts])
        return Outcome(verdict, alerts)
