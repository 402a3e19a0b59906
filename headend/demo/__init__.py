"""`headend demo`: the whole loop on one machine with embedded services and a simulated fleet."""
