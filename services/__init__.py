"""Services between the cogs and the core: configuration, job submission, rendering, actions."""
