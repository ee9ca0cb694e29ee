"""From tokens to batches: aligned pairs, resumable rank-sharded samplers, DataModules."""
