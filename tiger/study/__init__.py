"""The known-answer routing study: experts (and their scenes) whose right answer is known by construction."""
