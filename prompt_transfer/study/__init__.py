"""The transferability study: what each source prompt gives each target, and what predicts it."""
