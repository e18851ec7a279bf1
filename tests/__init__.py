"""judgeflow tests."""
