"""What the Snakemake rules ask: config checks, site settings, paths and command arguments."""
