"""`python -m services.scheduler`: run one scheduler process against NATS_URL and DATABASE_URL."""

from services.scheduler.bootstrap import main

if __name__ == "__main__":
    main()
