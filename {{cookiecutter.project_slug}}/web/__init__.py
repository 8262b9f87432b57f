"""Your first app: the home page (views, templates, static). Change or replace it."""
