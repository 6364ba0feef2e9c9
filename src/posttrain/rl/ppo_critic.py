"""PPO critics: where each response token's value comes from (posttrain.rl.ppo).

Both start from the stage's reward model (its LoRA and score head keep training as a per-token
value head) and differ in where the base weights live:

- RewardModelCritic: a copy of the reward model of its own (sequence-classification model +
  LoRA + score head). Works whatever model the reward model was trained from; costs a second
  copy of the base weights.
- AdapterCritic: the reward model's LoRA loaded as a second adapter, "critic", on the policy's
  own model, with the score head beside it. One copy of the base weights then serves the policy
  (adapter "default"), the reference (adapters off) and the critic: the memory plan of a 30B
  model. Possible when the reward model was trained from the policy's init model.

Both offer values(ids, mask, width), parameters() (the trainable ones), train(), eval(),
save(folder) and load(folder).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

ADAPTER = "critic"


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() uses: scoring must see what sampling saw."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def head_values(head, hidden: torch.Tensor) -> torch.Tensor:
    """The score head on hidden states in its own dtype, outside any autocast: values are
    regression targets whose small differences (the advantages) matter."""
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(head.weight.dtype)).squeeze(-1).float()


class RewardModelCritic:
    kind = "copy"          # recorded in the stage's metrics as critic_base

    def __init__(self, model):
        self.model = model                     # a PEFT-wrapped sequence-classification model

    def values(self, ids, mask, width: int) -> torch.Tensor:
        """The value of each response position (read where that token is predicted)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True)
        head = self.model.get_base_model().score
        return head_values(head, out.hidden_states[-1][:, width - 1:-1])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(Path(folder) / "adapter_model.safetensors"))


class AdapterCritic:
    kind = "shared"

    def __init__(self, policy, reward_adapter: Path):
        """`policy`: the PEFT policy (adapter "default"); `reward_adapter`: the reward model's
        adapter folder (LoRA + score head, as `posttrain reward` saves it)."""
        from peft import LoraConfig, set_peft_model_state_dict
        from safetensors.torch import load_file

        self.policy = policy
        self._policy_params = [p for p in policy.parameters() if p.requires_grad]
        config = LoraConfig.from_pretrained(reward_adapter)
        config.task_type, config.modules_to_save, config.inference_mode = "CAUSAL_LM", None, False
        state = load_file(Path(reward_adapter) / "adapter_model.safetensors")
        head = [k for k in state if k.endswith("score.weight")]
        if len(head) != 1:
            raise ValueError(f"{reward_adapter}: expected one score head in the reward model's adapter, found {head}")
        policy.add_adapter(ADAPTER, config)
        set_peft_model_state_dict(policy, {k: v for k, v in state.items() if "lora_" in k}, adapter_name=ADAPTER)
        self._adapter_params = [p for n, p in policy.named_parameters() if f".{ADAPTER}." in n]
        out = policy.get_base_model().get_output_embeddings().weight  # the last layer's device
        weight = state[head[0]].to(device=out.device, dtype=torch.float32)
        self.head = torch.nn.Linear(weight.shape[1], 1, bias=False, device=out.device, dtype=torch.float32)
        with torch.no_grad():
            self.head.weight.copy_(weight)
        self._trainable()

    def _trainable(self) -> None:
        # PEFT's set_adapter freezes every adapter but the active one; both keep training here.
        for p in (*self._policy_params, *self._adapter_params):
            p.requires_grad_(True)

    @contextmanager
    def _active(self):
        self.policy.set_adapter(ADAPTER)
        self._trainable()
        try:
            yield
        finally:
            self.policy.set_adapter("default")
            self._trainable()

    def values(self, ids, mask, width: int) -> torch.Tensor:
        decoder = self.policy.get_base_model().base_model       # no LM head: only hidden states are needed
        with self._active():
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
        return head_values(self.head, hidden[:, width - 1:-1])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self._adapter_params, self.head.weight]

    def train(self):
        self.head.train()

    def eval(self):
        self.head.eval()

    def save(self, folder: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.policy, adapter_name=ADAPTER)
        save_file({**{k: v.contiguous() for k, v in state.items()}, "score.weight": self.head.weight.detach()},
                  folder / "adapter_model.safetensors")

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(Path(folder) / "adapter_model.safetensors")
        with torch.no_grad():
            self.head.weight.copy_(state.pop("score.weight"))
        set_peft_model_state_dict(self.policy, state, adapter_name=ADAPTER)
