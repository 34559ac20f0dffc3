"""Wire formats other than OpenAI's, each an adapter over the emulator's core (one module a mode)."""
