"""What the training stages share: trainer settings, LoRA, resumable training, sizing, distillation."""
