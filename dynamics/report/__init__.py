"""Plain-text reports and seaborn figures of scan and study cubes."""
