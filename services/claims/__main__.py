"""`python -m services.claims`: run one claims process against NATS_URL and DATABASE_URL."""

from services.claims.bootstrap import main

if __name__ == "__main__":
    main()
