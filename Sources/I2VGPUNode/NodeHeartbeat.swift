import Foundation
import I2VCore
import Logging
import ServiceLifecycle

/// Announces this node in the store's registry while at least one of its workers is ready: the models it
/// serves, its slots, what it runs and its free device memory. API nodes load no model, so this is what
/// their `/models`, `/ready`, submit checks and ETAs go by. A node none of whose workers is ready stops
/// announcing and drops out once its last announcement is a lease old; a node that stops cleanly leaves
/// at once.
package struct NodeHeartbeat: Service {
    package let store: any NodeRegistry
    package let pool: WorkerPool
    package let catalog: ModelCatalogSource
    package let node: String
    package let interval: Duration
    package let logger: Logger

    package func run() async throws {
        let startedAt = Date()
        var announced = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            announced = await beat(startedAt: startedAt)
            // Until the first announcement, look every second: the workers become ready at a moment of their
            // own, and API nodes wait for it before they call themselves ready.
            let pause = announced ? interval : min(interval, .seconds(1))
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pause) }
        }
        do {
            try await store.removeWorkerNode(id: node)
        } catch {
            logger.info("could not leave the worker registry; the entry goes stale instead", metadata: ["error": "\(error)"])
        }
    }

    /// Whether the node is announced as live now.
    @discardableResult
    package func beat(startedAt: Date, now: Date = Date()) async -> Bool {
        let workers = await pool.snapshot()
        guard workers.contains(where: { $0.ready != nil }) else { return false }
        let memory = await pool.largestFreeMemory()
        do {
            guard let models = try await catalog.current()?.models else { return false }
            try await store.recordHeartbeat(
                WorkerNode(
                    id: node,
                    models: models,
                    slots: await pool.readySlots(),
                    running: workers.reduce(0) { $0 + $1.running },
                    freeMemoryBytes: memory?.freeBytes,
                    bytesPerToken: memory?.bytesPerToken,
                    startedAt: startedAt,
                    heartbeatAt: now,
                    devices: workers.map(\.device)
                ))
            return true
        } catch {
            // The dispatcher reports the store being away; this only repeats it.
            logger.debug("could not record the node's heartbeat", metadata: ["error": "\(error)"])
            return false
        }
    }

    package init(store: any NodeRegistry, pool: WorkerPool, catalog: ModelCatalogSource, node: String, interval: Duration, logger: Logger) {
        self.store = store
        self.pool = pool
        self.catalog = catalog
        self.node = node
        self.interval = interval
        self.logger = logger
    }
}
