/// Pages through an owner's tasks, newest or oldest first; another key's tasks never appear.
package struct ListTasks: Sendable {
    /// The most tasks one page holds.
    package static let maxLimit = 100

    package let store: any TaskListing

    package func callAsFunction(owner: String, after: String?, limit: Int, order: TaskListOrder) async throws -> TaskListingResult {
        try await store.listTasks(ownerKeyHash: owner, after: after, limit: min(max(1, limit), Self.maxLimit), order: order)
    }

    package init(store: any TaskListing) {
        self.store = store
    }
}
