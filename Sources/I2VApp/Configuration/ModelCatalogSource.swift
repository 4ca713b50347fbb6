import Foundation
import Synchronization

/// Where a node learns the models it serves. A node with workers reads its own checkpoint; an API node loads
/// no model, so it serves what the worker nodes announce with their heartbeats in the store.
final class ModelCatalogSource: Sendable {
    private enum Source: Sendable {
        case fixed(ModelCatalog)
        case registry(any TaskStore, lease: Duration)
    }

    private let source: Source
    /// The registry is read at most once a second: every submit and Video object needs the catalog.
    private let cached = Mutex<(catalog: ModelCatalog?, at: ContinuousClock.Instant)?>(nil)

    static func fixed(_ catalog: ModelCatalog) -> ModelCatalogSource { .init(source: .fixed(catalog)) }

    /// Announcements older than `lease` are from nodes that are gone.
    static func registry(store: any TaskStore, lease: Duration) -> ModelCatalogSource {
        .init(source: .registry(store, lease: lease))
    }

    private init(source: Source) { self.source = source }

    /// The models of the live worker nodes (the first live node's default first). While none is live, the
    /// models of the nodes last heard from, so a submit made while the workers restart still queues; nil
    /// when no worker node has ever registered.
    func current() async throws -> ModelCatalog? {
        switch source {
        case .fixed(let catalog):
            return catalog
        case .registry(let store, let lease):
            let now = ContinuousClock.now
            if let hit = cached.withLock({ $0 }), now - hit.at < .seconds(1) { return hit.catalog }
            let nodes = try await store.workerNodes()
            let live = nodes.filter { $0.isLive(now: Date(), lease: lease) }
            let catalog = Self.union(live.isEmpty ? nodes : live)
            cached.withLock { $0 = (catalog, now) }
            return catalog
        }
    }

    /// The models these nodes serve, each once, in the order the nodes come.
    static func union(_ nodes: [WorkerNode]) -> ModelCatalog? {
        var models: [ServedModel] = []
        for model in nodes.flatMap(\.models) where !models.contains(where: { $0.id == model.id }) {
            models.append(model)
        }
        return models.isEmpty ? nil : ModelCatalog(models: models)
    }
}
