"""Reinforcement learning beyond TRL's trainers: PPO with a critic, rejection sampling."""
