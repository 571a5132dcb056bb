"""Gradio demo."""
