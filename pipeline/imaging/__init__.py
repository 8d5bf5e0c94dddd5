"""Image operations every stage and predict share: preprocessing, the 2D slice canvas, grids, pictures."""
