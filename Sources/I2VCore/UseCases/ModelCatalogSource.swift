import Foundation
import Synchronization

/// Where a node learns the models it serves. A node with workers reads its own checkpoint; an API node loads
/// no model, so it serves what the worker nodes announce with their heartbeats in the store.
package final class ModelCatalogSource: Sendable {
    private enum Source: Sendable {
        case fixed(ModelCatalog)
        case workers(@Sendable () async -> [ServedModel], configured: ModelCatalog)
        case registry(LiveNodes)
    }

    private let source: Source

    package static func fixed(_ catalog: ModelCatalog) -> ModelCatalogSource { .init(source: .fixed(catalog)) }

    /// A node with workers: what its ready workers say they serve (each reads its model from its checkpoint),
    /// and until one is ready, what the configuration names.
    package static func workers(_ ready: @escaping @Sendable () async -> [ServedModel], configured: ModelCatalog) -> ModelCatalogSource {
        .init(source: .workers(ready, configured: configured))
    }

    package static func registry(_ nodes: LiveNodes) -> ModelCatalogSource {
        .init(source: .registry(nodes))
    }

    private init(source: Source) { self.source = source }

    /// Whether the models come from a fleet's registry, where a model no node serves now may be served by a
    /// node that starts later; a node with its own workers serves only what they load.
    package var isFleet: Bool {
        if case .registry = source { return true }
        return false
    }

    /// The models of the live worker nodes (the first live node's default first). While none is live, the
    /// models of the nodes last heard from, so a submit made while the workers restart still queues; nil
    /// when no worker node has ever registered.
    package func current() async throws -> ModelCatalog? {
        switch source {
        case .fixed(let catalog):
            return catalog
        case .workers(let ready, let configured):
            let models = ServedModel.merging(await ready())
            return models.isEmpty ? configured : ModelCatalog(models: models)
        case .registry(let nodes):
            let registered = try await nodes.registered()
            let live = try await nodes.live()
            return Self.union(live.isEmpty ? registered : live)
        }
    }

    /// The models these nodes serve, each once, in the order the nodes come; one takes LoRAs where any node's
    /// does.
    package static func union(_ nodes: [WorkerNode]) -> ModelCatalog? {
        let models = ServedModel.merging(nodes.flatMap(\.models))
        return models.isEmpty ? nil : ModelCatalog(models: models)
    }
}
