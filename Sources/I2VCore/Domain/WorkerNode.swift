import Foundation

/// A worker node as its heartbeat announces it in the store. API nodes load no model, so this is how they
/// know which models are served, whether any worker is alive, how much work the nodes can run at once and
/// how much device memory a job may use.
public struct WorkerNode: Sendable, Equatable {
    public var id: String
    public var models: [ServedModel]
    /// The most tasks it runs at once, and how many it was running at its last heartbeat.
    public var slots: Int
    public var running: Int
    /// The most free device memory any of its ready workers reported; nil where unknown (a CPU).
    public var freeMemoryBytes: Int?
    /// What one latent token costs on its devices, where an operator measured it.
    public var bytesPerToken: Int?
    public var startedAt: Date
    public var heartbeatAt: Date
    /// Its workers' devices, a group's joined with `+` (`cuda:0+cuda:1`): what an operator of the fleet
    /// reads on an API node's `/ready`.
    public var devices: [String]

    public init(
        id: String, models: [ServedModel], slots: Int, running: Int, freeMemoryBytes: Int? = nil,
        bytesPerToken: Int? = nil, startedAt: Date, heartbeatAt: Date, devices: [String] = []
    ) {
        self.id = id
        self.models = models
        self.slots = slots
        self.running = running
        self.freeMemoryBytes = freeMemoryBytes
        self.bytesPerToken = bytesPerToken
        self.startedAt = startedAt
        self.heartbeatAt = heartbeatAt
        self.devices = devices
    }

    /// Alive while its heartbeat is younger than a lease: the same bound after which its tasks are taken back.
    public func isLive(now: Date, lease: Duration) -> Bool {
        now.timeIntervalSince(heartbeatAt) <= lease.seconds
    }
}
