"""OpenVLA-OFT prompt and token ids (docs/reference.md §2; moojink/openvla-oft ``prismatic/vla/constants.py``).

    ids = [BOS] + sp("In: What action should the robot take to {task.lower()}?\nOut:") [+ '▁']

The reference tokenizes with BOS and no EOS, then appends Llama's '▁' piece (29871) if the prompt
does not already end with it — it always does not, since the string ends with ':' — recreating the
"Out: " space that precedes actions at training time. The 56 zero action slots and the </s> stop
token are added by the model, not here.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from vla_adp.constants import BOS_ID, SPACE_PIECE, STOP_ID

PROMPT_TEMPLATE = "In: What action should the robot take to {task}?\nOut:"


def prompt_text(instruction: str) -> str:
    return PROMPT_TEMPLATE.format(task=instruction.lower())


class PromptTokenizer:
    """SentencePiece with the OFT prompt rule; the same ids as HF's fast Llama tokenizer here."""

    def __init__(self, model_file: str | Path):
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path} (expected a SentencePiece 'tokenizer.model')")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError, ValueError) as e:  # sentencepiece raises RuntimeError on a corrupt file
            raise ValueError(f"{path}: not a readable SentencePiece model ({str(e).strip()[:200]})") from None
        self.space_id = self.sp.piece_to_id(SPACE_PIECE)
        if self.space_id == self.sp.unk_id():
            raise ValueError(f"{path}: the tokenizer has no '{SPACE_PIECE}' piece, which the OFT prompt needs")
        if self.sp.bos_id() != BOS_ID or self.sp.eos_id() != STOP_ID:
            raise ValueError(
                f"{path}: expected BOS id {BOS_ID} and EOS id {STOP_ID} (Llama convention), "
                f"found {self.sp.bos_id()} and {self.sp.eos_id()}"
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def prompt_ids(self, instruction: str) -> list[int]:
        """BOS + prompt + trailing '▁' (the reference's ``input_ids`` before the action slots)."""
        try:
            ids = [BOS_ID, *self.sp.encode(prompt_text(instruction))]
        except (RuntimeError, UnicodeError, TypeError) as e:  # e.g. a lone surrogate, which is not text
            raise ValueError(f"instruction {instruction[:60]!r} cannot be tokenized ({type(e).__name__}: {e})") from None
        if ids[-1] != self.space_id:
            ids.append(self.space_id)
        return ids
