r"""The exact verifier (``--verifier exact``): string equality of the final answer, nothing more.

For data whose answers are not LaTeX maths (names, words, codes, multiple-choice letters), where the
math verifier's symbolic equivalence does not apply. The *final answer* of a response is:

1. the content of its last ``\boxed{...}`` when it has one (the spec §4 instruction asks for it);
   a malformed or empty last box is no answer, as for the math verifier;
2. otherwise its last non-empty line;

stripped of surrounding whitespace. A blank response has no answer. The
reward is 1.0 when that answer equals the ground truth (also stripped) character for character:
case, spacing inside and punctuation all count.
"""

from __future__ import annotations

from laser_rl.rewards.math_verifier import count_boxes, extract_boxed


class ExactVerifier:
    """Exact string match of the final answer (module docstring) against the ground truth."""

    def extract_answer(self, response: str) -> str | None:
        if count_boxes(response):
            boxed = extract_boxed(response)
            return (boxed or "").strip() or None
        lines = [line.strip() for line in response.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def reward(self, response: str, answer: str) -> float:
        got = self.extract_answer(response)
        return 1.0 if got is not None and self.same_answer(got, answer) else 0.0

    def same_answer(self, a: str, b: str) -> bool:
        return a.strip() == b.strip()
