"""isvc's own CPU engine: tokens in, tokens out, with continuous batching. No HTTP, no wire schemas."""
