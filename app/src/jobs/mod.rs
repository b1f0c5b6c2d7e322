//! Jobs: the pages where a person starts jobs and watches them, and the server functions behind
//! them.

pub mod api;
pub mod detail;
pub mod form;
pub mod kinds;
pub mod list;
pub mod results;

pub use detail::JobPage;
pub use form::NewJobPage;
pub use list::JobListPage;
