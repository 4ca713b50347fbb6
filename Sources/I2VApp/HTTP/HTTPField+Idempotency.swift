import HTTPTypes

extension HTTPField.Name {
    /// Sent with a submit that may be retried: the same key and request give back the same task.
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    /// On an answer that gives back an earlier submit's task instead of creating one.
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
}
