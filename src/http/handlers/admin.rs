//! Levers, plans and contracts (SPEC 5), served by [`crate::admin`]. Writes need role
//! `admin`, reads `read` or `admin` (checked by the router).

use crate::http::util::ReqBody;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use crate::admin::{check_id, contracts, levers, plans, Admin, Saved};
use crate::http::error::ApiError;
use crate::http::router::Ctx;
use crate::http::util::{empty, json, parse_json, query_map, Body};
use crate::registry::persist::{Page, PageRequest};
use crate::registry::{Contract, ContractBody, Lever, LeverBody, PlanBody};
use crate::window::now_ms;

/// `201` for a new definition, `200` for a replacement or an unchanged repeat.
pub fn saved_status<T>(s: &Saved<T>) -> StatusCode {
    if s.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn contract_view(c: &Contract) -> serde_json::Value {
    c.view(now_ms())
}

/// `PUT /v1/levers/{lever}`.
pub async fn put_lever(
    ctx: &Ctx,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    levers::check_name(name)?;
    let bytes = ctx.admin_body(req).await?;
    let b: LeverBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    let saved = Admin::of(&ctx.state).put_lever(&t, name, &b).await?;
    Ok(json(saved_status(&saved), &*saved.value))
}

/// `GET /v1/levers/{lever}`.
pub fn get_lever(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    Ok(json(StatusCode::OK, &*levers::get(&t, name)?))
}

/// `DELETE /v1/levers/{lever}`.
pub async fn delete_lever(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    Admin::of(&ctx.state).delete_lever(&t, name).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `GET /v1/levers?cursor=&limit=`.
pub fn list_levers(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let q = query_map(req.uri().query())?;
    let page = Admin::of(&ctx.state).list_levers(&t, &PageRequest::from_query(&q))?;
    let items: Vec<&Lever> = page.items.iter().map(|l| &**l).collect();
    Ok(json(
        StatusCode::OK,
        &Page {
            items,
            next_cursor: page.next_cursor,
        },
    ))
}

/// `PUT /v1/contracts/{contract}`.
pub async fn put_contract(
    ctx: &Ctx,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    check_id("contract", id)?;
    let bytes = ctx.admin_body(req).await?;
    let b: ContractBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    let saved = Admin::of(&ctx.state).put_contract(&t, id, b).await?;
    Ok(json(saved_status(&saved), &contract_view(&saved.value)))
}

/// `GET /v1/contracts/{contract}`.
pub fn get_contract(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let c = contracts::get(&t, id)?;
    Ok(json(StatusCode::OK, &contract_view(&c)))
}

/// `GET /v1/contracts?customer=&cursor=&limit=`.
pub fn list_contracts(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let q = query_map(req.uri().query())?;
    let customer = q.get("customer").map(String::as_str);
    let page = Admin::of(&ctx.state).list_contracts(&t, customer, &PageRequest::from_query(&q))?;
    Ok(json(StatusCode::OK, &page.map(|c| contract_view(&c))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndBody {
    ends_at: Option<String>,
}

/// `POST /v1/contracts/{contract}/end`: events at or after `ends_at` (default now) get
/// `contract_ended`.
pub async fn end_contract(
    ctx: &Ctx,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = ctx.admin_body(req).await?;
    let b: EndBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        EndBody { ends_at: None }
    } else {
        parse_json(&bytes)?
    };
    let t = ctx.tenant()?;
    let c = Admin::of(&ctx.state)
        .end_contract(&t, id, b.ends_at.as_deref())
        .await?;
    Ok(json(StatusCode::OK, &contract_view(&c)))
}

/// `PUT /v1/plans/{plan}`: creates or replaces a plan. Contracts on the plan see the new
/// quotas with their next event.
pub async fn put_plan(
    ctx: &Ctx,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    check_id("plan", id)?;
    let bytes = ctx.admin_body(req).await?;
    let b: PlanBody = parse_json(&bytes)?;
    let t = ctx.tenant()?;
    let saved = Admin::of(&ctx.state).put_plan(&t, id, b).await?;
    Ok(json(saved_status(&saved), &saved.value.view()))
}

/// `GET /v1/plans/{plan}`.
pub fn get_plan(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    Ok(json(StatusCode::OK, &plans::get(&t, id)?.view()))
}

/// `GET /v1/plans?cursor=&limit=`.
pub fn list_plans(ctx: &Ctx, req: &Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let t = ctx.tenant()?;
    let q = query_map(req.uri().query())?;
    let page = Admin::of(&ctx.state).list_plans(&t, &PageRequest::from_query(&q))?;
    Ok(json(StatusCode::OK, &page.map(|p| p.view())))
}
