"""`python -m services.auth`: run one auth process against NATS_URL and DATABASE_URL."""

from services.auth.bootstrap import main

if __name__ == "__main__":
    main()
