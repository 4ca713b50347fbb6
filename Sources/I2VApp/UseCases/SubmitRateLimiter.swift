import Foundation

/// A token bucket per API key for `/video/submit`: `perMinute` submits, refilled evenly.
actor SubmitRateLimiter {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private let perMinute: Int
    private var buckets: [String: Bucket] = [:]

    init(perMinute: Int) {
        self.perMinute = perMinute
    }

    /// nil when the submit may go ahead; otherwise seconds until the next token.
    func take(for key: String) -> Int? {
        guard perMinute > 0 else { return nil }
        let now = ContinuousClock.now
        let capacity = Double(perMinute)
        let perSecond = capacity / 60
        var bucket = buckets[key] ?? Bucket(tokens: capacity, updated: now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated).seconds * perSecond)
        bucket.updated = now
        defer { buckets[key] = bucket }
        guard bucket.tokens >= 1 else {
            return Int(((1 - bucket.tokens) / perSecond).rounded(.up))
        }
        bucket.tokens -= 1
        return nil
    }
}
