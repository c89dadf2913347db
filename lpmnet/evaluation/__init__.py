"""What is made of the fused volumes: metric tables, the statistical comparison and its rendering, and the
pictures (montages, registration QC, training and learning curves)."""
