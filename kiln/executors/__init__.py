"""Executors run attempts: local processes now, Ray and Docker later, behind one interface."""
