"""Token stores: verified, sharded, content-addressed caches of tokenized audio."""
