"""The shadow mirror of a progressive rollout: a stable replica's sampled calls replayed on the candidate revision
and the two answers compared (``mirror``, ``compare``)."""
