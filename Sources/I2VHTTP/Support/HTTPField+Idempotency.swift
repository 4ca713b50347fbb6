import HTTPTypes
import I2VCore
import I2VGPUNode

extension HTTPField.Name {
    /// Sent with a submit that may be retried: the same key and request give back the same task.
    package static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    /// On an answer that gives back an earlier submit's task instead of creating one.
    package static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
}
