import Foundation
import Synchronization

/// The worker nodes registered in the store, read through one cache. Submits, `/ready`, `/models`, estimates
/// and the memory check all ask on every request; the registry changes only with heartbeats (a third of a
/// lease apart), so it is read at most once per `maxAge` for all of them.
package final class LiveNodes: Sendable {
    private let registry: any NodeRegistry
    /// Announcements older than a lease are from nodes that are gone.
    package let lease: Duration
    private let maxAge: Duration
    private let cached = Mutex<(nodes: [WorkerNode], at: ContinuousClock.Instant)?>(nil)

    package init(registry: any NodeRegistry, lease: Duration, maxAge: Duration = .seconds(1)) {
        self.registry = registry
        self.lease = lease
        self.maxAge = maxAge
    }

    /// Every registered node, the most recently heard first, alive or not.
    package func registered() async throws -> [WorkerNode] {
        let now = ContinuousClock.now
        if let hit = cached.withLock({ $0 }), now - hit.at < maxAge { return hit.nodes }
        let nodes = try await registry.workerNodes()
        cached.withLock { $0 = (nodes, now) }
        return nodes
    }

    /// The nodes whose heartbeat is younger than a lease.
    package func live(now: Date = Date()) async throws -> [WorkerNode] {
        try await registered().filter { $0.isLive(now: now, lease: lease) }
    }

    /// On an API node, the device memory the live worker nodes announced: a job is refused only when it fits
    /// on none of them (the largest free memory), and not at all while none says (a CPU, or none alive).
    package func largestFreeMemory() async -> DeviceMemory? {
        guard let live = try? await live(), !live.isEmpty, live.allSatisfy({ $0.freeMemoryBytes != nil }) else { return nil }
        guard let best = live.max(by: { ($0.freeMemoryBytes ?? 0) < ($1.freeMemoryBytes ?? 0) }) else { return nil }
        return DeviceMemory(freeBytes: best.freeMemoryBytes, bytesPerToken: best.bytesPerToken)
    }
}
