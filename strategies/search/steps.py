"""Search over reasoning steps inside one request: the tree, the scores, the choices. Pure (no I/O).

A node is a partial answer: its parent's text plus one step the model wrote (cut at a
delimiter, by default a newline, or by a token budget). A step is scored by Marco-o1's
`confidence`: the mean over its tokens of each token's probability renormalised over its
top-5 alternatives (from the upstream's logprobs). A path's score aggregates its steps'
(mean, Marco-o1's rule, or min: a chain is only as right as its weakest step). With
`score: reward` a process reward endpoint scores each prefix, and the path's score is
its last prefix's (`aggregate: last`).

Beam search keeps the `width` best partial paths per depth; MCTS selects by UCT, expands a
node into `expansions` children, rolls one out to the end and backs the rollout's score up.
The sampler calls live in `steps_run.py`; this module decides what to call and what to keep.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from itsproxy.strategies.search.guard import GuardSpec, parse_guard
from itsproxy.strategies.search.step_scorers import StepCheck, StepJudge
from itsproxy.strategies.stages.reward import RewardStage
from itsproxy.strategies.types import SpecError

METHODS = ("beam", "mcts")
SCORERS = ("confidence", "reward", "judge", "check")
AGGREGATES = ("mean", "min", "last")
CONTINUATIONS = ("completion", "chat")
STEPS_KEYS = {"method", "width", "expansions", "max_depth", "rollouts", "c", "score", "delimiter",
              "max_step_tokens", "final", "aggregate", "continuation", "top_logprobs", "reward", "guard",
              "judge", "check"}


@dataclass(frozen=True)
class StepsSpec:
    method: str = "beam"
    width: int = 3  # beam: partial paths kept per depth
    expansions: int = 3  # children sampled per expanded node (one call with n)
    max_depth: int = 8  # steps before the rest is written in one go
    rollouts: int = 8  # mcts: selection-expansion-rollout iterations
    c: float = 1.0  # mcts: UCT exploration constant
    score: str = "confidence"
    delimiter: str | None = "\n"  # a step ends here (sent as `stop`)
    max_step_tokens: int | None = None  # or after this many tokens
    final: str = r"(?i)\banswer is\b"  # a step matching this ends the chain
    aggregate: str = "mean"  # path score from step scores
    continuation: str = "completion"  # completion-mode model, or chat with continue_final_message
    top_logprobs: int = 5
    reward: RewardStage | None = None  # score: reward: the process reward endpoint (scores each prefix)
    guard: GuardSpec | None = None  # test the scorer on probe chains before trusting it (guard.py)
    judge: StepJudge | None = None  # score: judge: the judge model rates each partial chain
    check: StepCheck | None = None  # score: check: checkers prune the partial chains they reject

    @property
    def final_re(self) -> re.Pattern[str]:
        return re.compile(self.final)

    async def aclose(self) -> None:
        """Release the clients the scorers hold (for the runtime, when the config is retired)."""
        if self.reward is not None:
            await self.reward.aclose()
        if self.check is not None:
            await self.check.aclose()


def _int(body: dict[str, Any], key: str, path: str, default: int, lo: int = 1) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SpecError(f"{path}.{key}", f"must be an integer >= {lo}, got {value!r}")
    return value


def _choice(body: dict[str, Any], key: str, path: str, options: tuple[str, ...], default: str) -> str:
    value = body.get(key, default)
    if value not in options:
        raise SpecError(f"{path}.{key}", f"must be one of {', '.join(options)}, got {value!r}")
    return str(value)


def parse_steps(body: Any, path: str, models: set[str] | None = None) -> StepsSpec | None:
    """`generate.steps` (at `path`); None if absent."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise SpecError(path, "must be a mapping {method: beam|mcts, width, expansions, max_depth, ...}")
    for key in body:
        if key not in STEPS_KEYS:
            raise SpecError(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(STEPS_KEYS))})")
    if "score" in body and body["score"] not in SCORERS:
        raise SpecError(f"{path}.score", f"{body['score']!r} is not supported; supported: {', '.join(SCORERS)}")
    delimiter = body.get("delimiter", "\n")
    if delimiter is not None and (not isinstance(delimiter, str) or not delimiter):
        raise SpecError(f"{path}.delimiter", "must be a non-empty string or null (then max_step_tokens cuts steps)")
    max_step = body.get("max_step_tokens")
    if max_step is not None:
        max_step = _int(body, "max_step_tokens", path, 0)
    if delimiter is None and max_step is None:
        raise SpecError(path, "needs a delimiter or max_step_tokens to cut steps")
    c = body.get("c", 1.0)
    if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0:
        raise SpecError(f"{path}.c", f"must be a number >= 0, got {c!r}")
    final = body.get("final", StepsSpec.final)
    try:
        re.compile(final)
    except (re.error, TypeError) as exc:
        raise SpecError(f"{path}.final", f"must be a regular expression: {exc}") from None
    score = str(body.get("score", "confidence"))
    reward = _reward(body, path, score)
    judge = _scorer_spec(body, path, score, "judge")
    check = _scorer_spec(body, path, score, "check")
    top = _int(body, "top_logprobs", path, 5)
    if top > 20:
        raise SpecError(f"{path}.top_logprobs", "must be at most 20 (OpenAI's limit)")
    return StepsSpec(method=_choice(body, "method", path, METHODS, "beam"),
                     width=_int(body, "width", path, 3), expansions=_int(body, "expansions", path, 3),
                     max_depth=_int(body, "max_depth", path, 8), rollouts=_int(body, "rollouts", path, 8),
                     c=float(c), score=score, delimiter=delimiter, max_step_tokens=max_step, final=final,
                     aggregate=_choice(body, "aggregate", path, AGGREGATES,
                                       "last" if score in ("reward", "judge") else "mean"),
                     continuation=_choice(body, "continuation", path, CONTINUATIONS, "completion"),
                     top_logprobs=top, reward=reward, guard=parse_guard(body.get("guard"), f"{path}.guard", score),
                     judge=StepJudge.build(judge, f"{path}.judge", models or set()) if judge is not None else None,
                     check=StepCheck.build(check, f"{path}.check") if check is not None else None)


def _scorer_spec(body: dict[str, Any], path: str, score: str, key: str) -> Any:
    """The `judge:` / `check:` mapping a `score: judge|check` needs (and only it)."""
    raw = body.get(key)
    if score != key:
        if raw is not None:
            raise SpecError(f"{path}.{key}", f"only applies with `score: {key}`")
        return None
    if raw is None:
        what = "{model, rubric?, temperature?, max_tokens?}" if key == "judge" else \
            "{command | python | http | regex | json_schema, timeout_s?}"
        raise SpecError(f"{path}.{key}", f"score: {key} needs `{key}: {what}`")
    return raw


def _reward(body: dict[str, Any], path: str, score: str) -> RewardStage | None:
    """`reward:` (the select stage's endpoint form) for `score: reward`: a PRM scoring each prefix.
    Scores are normalised one way (logistic unless said) so batches compare."""
    raw = body.get("reward")
    if score != "reward":
        if raw is not None:
            raise SpecError(f"{path}.reward", "only applies with `score: reward`")
        return None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}.reward", "score: reward needs `reward: {url, api?, model?, timeout_s?}` "
                        "(a process reward endpoint)")
    if "generative" in raw:
        raise SpecError(f"{path}.reward.generative", "a step search scores prefixes with an endpoint, "
                        "not a generative reward")
    stage = RewardStage.build({"normalize": "logistic", **raw}, f"{path}.reward")
    if stage.normalize == "auto":
        raise SpecError(f"{path}.reward.normalize", "auto normalises each batch on its own; pick logistic or none")
    return stage


# ---------------------------------------------------------------- scores


def token_confidence(entry: dict[str, Any]) -> float | None:
    """The token's probability renormalised over its top alternatives (Marco-o1); None without a logprob."""
    lp = entry.get("logprob")
    if not isinstance(lp, (int, float)):
        return None
    top = [t.get("logprob") for t in entry.get("top_logprobs") or [] if isinstance(t, dict)]
    alts = [float(x) for x in top if isinstance(x, (int, float))]
    if not alts:
        return math.exp(lp)
    total = sum(math.exp(x) for x in alts)
    if not any(t.get("token") == entry.get("token") for t in entry.get("top_logprobs") or []):
        total += math.exp(lp)
    return math.exp(lp) / total if total > 0 else None


def confidence(entries: list[dict[str, Any]]) -> float | None:
    """A step's score: the mean token confidence; None when no token carried a logprob."""
    values = [v for e in entries if (v := token_confidence(e)) is not None]
    return sum(values) / len(values) if values else None


def split_steps(entries: list[dict[str, Any]], delimiter: str | None) -> list[list[dict[str, Any]]]:
    """Logprob entries grouped by step: a token goes to the step its text starts in; a token that
    is only delimiter ends the step before it."""
    if delimiter is None:
        return [entries] if entries else []
    out: list[list[dict[str, Any]]] = [[]]
    text = ""
    for e in entries:
        token = str(e.get("token") or "")
        out[-1].append(e)
        text += token
        if text.endswith(delimiter):
            out.append([])
            text = ""
    return [s for s in out if s]


def aggregate(scores: list[float], how: str) -> float:
    if not scores:
        return 0.0
    if how == "last":
        return scores[-1]
    return min(scores) if how == "min" else sum(scores) / len(scores)


# ---------------------------------------------------------------- the tree


@dataclass(eq=False)
class Node:
    text: str  # this step's text (with its delimiter when the step was cut there)
    parent: Node | None = None
    score: float | None = None  # the step's confidence
    terminal: bool = False  # the chain ends here (final line, or the model wrote nothing more)
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0  # mcts: sum of backed-up rollout scores
    expanded: bool = False
    entries: list[dict[str, Any]] = field(default_factory=list)  # the step's logprob entries
    completion_tokens: int = 0
    prompt_tokens: int = 0
    call_id: int = -1

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def path(self) -> list[Node]:
        """Root excluded, in order."""
        out: list[Node] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def partial(self, root_text: str) -> str:
        return root_text + "".join(n.text for n in self.path())

    def step_scores(self) -> list[float]:
        return [n.score for n in self.path() if n.score is not None]


def path_score(node: Node, how: str, extra: list[float] | None = None) -> float:
    return aggregate(node.step_scores() + (extra or []), how)


def best_beams(nodes: list[Node], width: int, how: str) -> list[Node]:
    """The `width` best partial paths (earliest on ties)."""
    ranked = sorted(enumerate(nodes), key=lambda p: (-path_score(p[1], how), p[0]))
    return [n for _, n in ranked[:width]]


def uct_child(node: Node, c: float) -> Node:
    """The child maximising UCT; an unvisited child first (earliest)."""
    for child in node.children:
        if child.visits == 0:
            return child
    log_n = math.log(max(node.visits, 1))
    return max(node.children, key=lambda ch: ch.value / ch.visits + c * math.sqrt(log_n / ch.visits))


def select_leaf(root: Node, c: float) -> Node:
    """MCTS selection: down by UCT while the node is expanded, has children and is not terminal."""
    node = root
    while node.expanded and node.children and not node.terminal:
        node = uct_child(node, c)
    return node


def backprop(node: Node | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value += value
        node = node.parent


def count_nodes(root: Node) -> int:
    return 1 + sum(count_nodes(ch) for ch in root.children)


def max_depth(root: Node) -> int:
    return max((max_depth(ch) for ch in root.children), default=-1) + 1
