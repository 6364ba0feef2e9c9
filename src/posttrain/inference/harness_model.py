"""lm-eval's `hf` model with continuous batching for greedy generation.

lm-eval runs `generate_until` requests in fixed batches, each until its longest answer ends, so a
batch of 16 whose rows stop after 20 to 96 tokens runs 96 steps for all of them. This model hands
every greedy request of a `generate_until` call to `posttrain.inference.generation.greedy_refilling`,
which keeps `batch_size` rows decoding and gives each finished row's place to the next request.
The texts are lm-eval's own: the same prompts, stop strings and post-processing, only the batch
that computes them differs. Sampling, log-likelihood requests and models whose decoding cannot be
refilled run lm-eval's code unchanged.
"""

from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from posttrain.inference.generation import greedy_refilling, refillable


class RefillingHFLM(HFLM):
    def generate_until(self, requests, disable_tqdm: bool = False):
        # One lm-eval batch holds every request (per generation settings): the rows then pass
        # through _model_generate together, which keeps `batch_size` of them decoding at a time.
        slots = self.batch_size_per_gpu
        self._slots, self.batch_size_per_gpu = slots, max(1, len(requests))
        try:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self.batch_size_per_gpu = slots

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        mask = generation_kwargs.get("attention_mask")
        greedy = not generation_kwargs.get("do_sample") and not generation_kwargs.get("temperature")
        if not greedy or mask is None or not refillable(self.model):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        eos = generation_kwargs.get("eos_token_id", self.tokenizer.eos_token_id)
        stops = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        prompts = [row[m.bool()].tolist() for row, m in zip(context, mask)]

        def stop_when(ids: list[int]) -> bool:
            text = self.tokenizer.decode(ids)
            return any(s in text for s in stop)

        # lm-eval's own bar moves once per batch, here once for the whole call: this one counts answers.
        with tqdm(total=len(prompts), desc="answers", unit="answer") as bar:
            outs = greedy_refilling(self.model, prompts, stops=stops, max_new_tokens=max_length - context.shape[1],
                                    slots=getattr(self, "_slots", self.batch_size_per_gpu), stop_when=stop_when,
                                    on_finished=lambda: bar.update(1))
        # The layout lm-eval reads: the padded context, then each row's tokens padded at the end.
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stops[0]
        new = torch.full((len(outs), max(1, max(len(o) for o in outs))), pad, dtype=context.dtype)
        for r, o in enumerate(outs):
            new[r, :len(o)] = torch.tensor(o, dtype=context.dtype)
        return torch.cat([context, new.to(context.device)], dim=1)
