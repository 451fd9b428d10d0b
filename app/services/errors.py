"""Errors the services raise; the routes turn each into one HTTP status with its message."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadQuery(ServiceError):
    status_code = 400


class UnknownWords(ServiceError):
    status_code = 422

    def __init__(self, words: list[str]):
        super().__init__(f"the encoder does not know the word(s): {', '.join(words)}")
        self.words = words


class NotFound(ServiceError):
    status_code = 404


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMedia(ServiceError):
    status_code = 415


class Unavailable(ServiceError):
    status_code = 503
