import Foundation
import I2VCore

/// The webhook knobs, read with the rest of the configuration (`I2V_WEBHOOK_*`).
public struct WebhookSettings: Sendable, Equatable {
    /// `I2V_WEBHOOK_SECRET`: `whsec_<base64>`; nil: generated on first start and kept in the data dir.
    public var secret: String?
    /// One attempt, lookup and connection included (`I2V_WEBHOOK_TIMEOUT_SECONDS`).
    public var timeout: Duration
    /// Deliveries in flight at once on a node (`I2V_WEBHOOK_CONCURRENCY`).
    public var concurrency: Int
    /// How often the outbox is read when nothing woke it (`I2V_WEBHOOK_POLL_SECONDS`).
    public var pollInterval: Duration
    public var retry: WebhookRetryPolicy

    public static let defaultSchedule: [Duration] = [5, 10, 30, 120, 300, 1800, 7200, 18000, 36000].map { .seconds($0) }

    public init(
        secret: String? = nil,
        timeout: Duration = .seconds(10),
        concurrency: Int = 8,
        pollInterval: Duration = .seconds(1),
        retry: WebhookRetryPolicy = WebhookRetryPolicy(delays: defaultSchedule, window: .seconds(86_400))
    ) {
        self.secret = secret
        self.timeout = timeout
        self.concurrency = concurrency
        self.pollInterval = pollInterval
        self.retry = retry
    }
}

/// When a failed delivery is tried again: after each failed attempt the next delay of the schedule (the
/// last one repeats), never past the window counted from the event; the last attempt falls at the window's
/// end, and a failure there gives up.
public struct WebhookRetryPolicy: Sendable, Equatable {
    public var delays: [Duration]
    public var window: Duration

    public init(delays: [Duration], window: Duration) {
        self.delays = delays.isEmpty ? WebhookSettings.defaultSchedule : delays
        self.window = window
    }

    /// When to try again after `attempts` failed attempts of a message created at `createdAt`; nil: give up.
    public func nextAttempt(afterAttempts attempts: Int, createdAt: Date, now: Date) -> Date? {
        let end = createdAt.addingTimeInterval(window.seconds)
        guard now < end else { return nil }
        let delay = delays[min(max(attempts, 1), delays.count) - 1]
        return min(now.addingTimeInterval(delay.seconds), end)
    }
}
