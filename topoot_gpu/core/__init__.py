"""What every stage shares: argument checks, the backend table, map utilities, random numbers."""
