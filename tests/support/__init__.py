"""Helpers the test suite shares: real servers, real processes, real receivers."""
