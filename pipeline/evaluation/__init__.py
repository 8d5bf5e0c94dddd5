"""How good a model is: Dice (``dice``), whole real heads scored in 3D (``heads``), the reference labels a user
supplies (``references``) and how sure a comparison of strategies is (``compare``)."""
