"""A typed client for OpenAI-compatible Batch APIs (FastRouter, OpenAI, Groq, gateways)."""
