// Keyhold's GraphiQL: it talks to the endpoint it was served from (/graphql or /api/graphql).
"use strict";
const root = ReactDOM.createRoot(document.getElementById("graphiql"));
root.render(
  React.createElement(GraphiQL, {
    fetcher: GraphiQL.createFetcher({ url: window.location.pathname }),
    defaultEditorToolsVisibility: true,
  }),
);
